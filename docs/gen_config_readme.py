import sys
import os
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT + "/src")
from dicomprep.config import schema_markdown
head = open(ROOT + "/docs/config_readme_head.md").read()
open(ROOT + "/config/README.md", "w").write(head + "\n## Every key\n\nGenerated from `config/schema.yaml` (`python -c 'from dicomprep.config import schema_markdown; print(schema_markdown())'`).\n\n" + schema_markdown() + "\n")
