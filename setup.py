"""Build hook: the wheel carries the workflow (Snakefile, rules, scripts, envs,
config, profiles), so `pip install dicomprep` can run `dicomprep run` without a
checkout. An editable install uses the checkout's own files instead."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Workflow files, relative to the project root; copied into dicomprep/workflow/ of the wheel.
WORKFLOW = ["Snakefile", "workflow", "scripts", "envs", "config", "profiles"]


class BuildWithWorkflow(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "dicomprep" / "workflow"
        for name in WORKFLOW:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake"))
            elif src.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildWithWorkflow})
