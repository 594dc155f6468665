"""The cohort report: one self-contained HTML page (``share/qc/report.html``).

No network and no external files: styles and scripts are inline and every
picture is embedded as a data URI, so the page works from a ``file://`` URL
and from inside a zip. It shows totals per stage, a sortable/filterable table
of series with their checks and thumbnails, a section per subject, the leak
verification of share/ and the audit summary. Everything shown comes from
share/ or is a count; reasons are stripped of paths.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from ..errors import is_environment_error
from .. import __version__
from ..dicomio import write_text
from ..logs import get_logger
from ..tables import share_safe_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2630;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:16px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}main{padding:16px 24px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:15px;margin:12px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dde2e8;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#5a6573}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #e6e9ee;padding:5px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5;cursor:pointer;user-select:none;position:sticky;top:0}th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
.pass{color:#17803d;font-weight:600}.warn{color:#a86300;font-weight:600}.fail{color:#b3261e;font-weight:600}
img.thumb{height:64px;border:1px solid #ccd;background:#000}img.full{max-width:100%;border:1px solid #ccd;background:#000}
.controls{display:flex;gap:10px;margin:0 0 10px;align-items:center}.controls input{padding:5px 8px;width:280px}
ul.checks{margin:0;padding-left:16px}ul.checks li{margin:1px 0}.muted{color:#6b7580;font-size:12px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
"""

JS = """
(function(){
  var table=document.getElementById('series-table'); if(!table) return;
  var body=table.tBodies[0]; var rows=Array.prototype.slice.call(body.rows);
  var q=document.getElementById('filter'); var st=document.getElementById('status-filter');
  var count=document.getElementById('shown-count');
  function apply(){
    var text=(q.value||'').toLowerCase(); var s=st.value; var n=0;
    rows.forEach(function(r){
      var ok=(!text||r.textContent.toLowerCase().indexOf(text)>=0)&&(!s||r.getAttribute('data-status')===s);
      r.style.display=ok?'':'none'; if(ok) n++;
    });
    count.textContent=n+' of '+rows.length+' series shown';
  }
  q.addEventListener('input',apply); st.addEventListener('change',apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc');
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-sort')||a.cells[i].textContent, y=b.cells[i].getAttribute('data-sort')||b.cells[i].textContent;
        var nx=parseFloat(x), ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
        return asc?c:-c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  apply();
})();
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame()


def stage_totals(out_dir: Path, units: pd.DataFrame, qcs: list[dict]) -> dict:
    """Counts per stage, from the private index and the stage manifests (numbers only)."""
    idx = out_dir / "private" / "index"
    totals: dict = {}
    inst = idx / "instances.parquet"
    n_inst = len(pd.read_parquet(inst, columns=["path"])) if inst.is_file() else 0
    unreadable = _read_csv(idx / "unreadable.csv")
    totals["files found"] = n_inst + len(unreadable)
    totals["files indexed"] = n_inst
    totals["files not read"] = len(unreadable)
    totals["not read, by reason"] = dict(Counter(_reason_category(r) for r in unreadable.get("reason", [])))
    left_out = _read_csv(idx / "left_out.csv")
    totals["series left out by selection"] = dict(Counter(map(share_safe_text, left_out.get("reason", []))))
    totals["units"] = len(units)
    dropped: Counter = Counter()
    converted: Counter = Counter()
    failed: Counter = Counter()
    n_series = 0
    masks = 0
    for q in qcs:
        for s in q.get("series", []):
            n_series += 1
            deid = s.get("stages", {}).get("deid")
            if deid and deid.get("written", 0) == 0:
                for r in deid.get("reasons") or ["dropped"]:
                    code, _, detail = share_safe_text(r).partition(":")
                    dropped[code.replace("_", " ") if detail else code] += 1
            for stage in ("dcm2niix", "ncct", "seg"):
                for r in s.get("stages", {}).get(stage, []):
                    if r["status"] in ("converted", "partial"):
                        converted[stage] += 1
                    elif r["status"] == "failed":
                        failed[stage] += 1
            masks += len(s.get("segments", []))
    totals["series selected"] = n_series
    totals["series not shared, by reason"] = dict(dropped)
    totals["converted, by stage"] = dict(converted)
    totals["failed, by stage"] = dict(failed)
    totals["masks"] = masks
    return totals


def _reason_category(reason: str) -> str:
    text = share_safe_text(reason)
    return text.split("(")[0].split(":")[0].strip()[:80] or "unknown"


def _checks_html(checks: list[dict]) -> str:
    items = "".join(f'<li><span class="{_esc(c["status"])}">{_esc(c["status"])}</span> '
                    f'{_esc(c["name"])}: {_esc(c["message"])}</li>' for c in checks)
    return f'<ul class="checks">{items}</ul>'


def render(out_dir: Path, *, verification: dict | None = None) -> str:
    """The report's HTML text."""
    share = out_dir / "share"
    units = _read_csv(out_dir / "private" / "units.csv")
    qcs = []
    for unit in units.get("unit", []):
        path = share / "qc" / unit / "qc.json"
        if path.is_file():
            qcs.append(json.loads(path.read_text()))
    totals = stage_totals(out_dir, units, qcs)
    audit = {}
    if (share / "audit.yaml").is_file():
        audit = yaml.safe_load((share / "audit.yaml").read_text()) or {}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>dicomprep cohort report</title><style>{CSS}</style></head><body>"
             f"<header><h1>dicomprep cohort report</h1><p>dicomprep {__version__} · pseudonymous identifiers only · "
             f"{len(units)} units</p></header><main>"]
    parts.append(_totals_html(totals))
    parts.append(_verification_html(verification))
    parts.append(_series_table_html(share, units, qcs))
    parts.append(_subjects_html(share, units, qcs))
    parts.append(_audit_html(audit))
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "".join(parts)


def _cards(items: dict) -> str:
    return "<div class='cards'>" + "".join(
        f"<div class='card'><b>{_esc(v)}</b><span>{_esc(k)}</span></div>" for k, v in items.items()) + "</div>"


def _breakdown(title: str, counts: dict) -> str:
    if not counts:
        return f"<p class='muted'>{_esc(title)}: none</p>"
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"<h3>{_esc(title)}</h3><table><thead><tr><th>reason</th><th>count</th></tr></thead><tbody>{rows}</tbody></table>"


def _totals_html(t: dict) -> str:
    cards = {k: t[k] for k in ("files found", "files indexed", "files not read", "units", "series selected", "masks")}
    for stage, n in t["converted, by stage"].items():
        cards[f"converted ({stage})"] = n
    out = ["<section id='totals'><h2>Totals per stage</h2>", _cards(cards)]
    out.append(_breakdown("Files not read, by reason", t["not read, by reason"]))
    out.append(_breakdown("Series left out by selection", t["series left out by selection"]))
    out.append(_breakdown("Series not shared (de-identification filters)", t["series not shared, by reason"]))
    out.append(_breakdown("Conversion failures, by stage", t["failed, by stage"]))
    out.append("</section>")
    return "".join(out)


def _verification_html(v: dict | None) -> str:
    if not v:
        return "<section id='verification'><h2>Leak verification</h2><p class='muted'>not run</p></section>"
    status = str(v.get("status", "?"))
    cls = "pass" if status == "pass" else "fail"
    hits = v.get("hits") or []
    rows = "".join(f"<tr><td>{_esc(h.get('file'))}</td><td>{_esc(h.get('kind'))}</td><td>{_esc(h.get('where'))}</td></tr>"
                   for h in hits[:200])
    table = f"<table><thead><tr><th>file</th><th>kind</th><th>where</th></tr></thead><tbody>{rows}</tbody></table>" if hits else ""
    return (f"<section id='verification'><h2>Leak verification</h2><p>Scan of share/ before this report was written: "
            f"<span class='{cls}'>{_esc(status)}</span>, {_esc(v.get('files_scanned', '?'))} files scanned, "
            f"{len(hits)} hit(s). The final scan, including this page, is share/verification.json.</p>{table}</section>")


def _series_table_html(share: Path, units: pd.DataFrame, qcs: list[dict]) -> str:
    subj = dict(zip(units.get("unit", []), units.get("subject", [])))
    rows = []
    for q in qcs:
        for s in q.get("series", []):
            thumbs = "".join(f"<img class='thumb' alt='{_esc(s['series_id'])} picture' src='{data_uri(share / p)}'>"
                             for p in s.get("pictures", [])[:2] if (share / p).is_file())
            n_fail = sum(c["status"] == "fail" for c in s["checks"])
            n_warn = sum(c["status"] == "warn" for c in s["checks"])
            summary = "; ".join(f"{c['name']}: {c['message']}" for c in s["checks"] if c["status"] != "pass")[:400]
            rows.append(
                f"<tr data-status='{_esc(s['status'])}'><td>{_esc(subj.get(q['unit'], ''))}</td><td>{_esc(q['unit'])}</td>"
                f"<td>{_esc(s['series_id'])}</td><td>{_esc(s.get('kind'))}</td><td>{_esc(s.get('modality'))}</td>"
                f"<td class='{_esc(s['status'])}'>{_esc(s['status'])}</td>"
                f"<td data-sort='{n_fail * 1000 + n_warn}'>{_esc(summary) or 'all checks pass'}</td>"
                f"<td data-sort='{len(s.get('outputs', []))}'>{len(s.get('outputs', []))}</td><td>{thumbs}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("subject", "unit", "series", "kind", "modality", "status", "findings", "outputs", "pictures"))
    return ("<section id='series'><h2>Series</h2><div class='controls'>"
            "<input id='filter' type='search' placeholder='filter: subject, kind, finding…' aria-label='filter series'>"
            "<select id='status-filter' aria-label='status'><option value=''>any status</option><option>pass</option>"
            "<option>warn</option><option>fail</option></select><span id='shown-count' class='muted'></span></div>"
            f"<table id='series-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _subjects_html(share: Path, units: pd.DataFrame, qcs: list[dict]) -> str:
    by_unit = {q["unit"]: q for q in qcs}
    out = ["<section id='subjects'><h2>Subjects</h2>"]
    for subject, grp in units.groupby("subject", sort=True) if len(units) else []:
        out.append(f"<details id='subject-{_esc(subject)}'><summary>{_esc(subject)} · {len(grp)} unit(s)</summary>")
        for unit in grp["unit"]:
            q = by_unit.get(unit, {"series": []})
            out.append(f"<h3>{_esc(unit)}</h3>")
            for s in q["series"]:
                pics = "".join(f"<img class='full' alt='{_esc(s['series_id'])}' src='{data_uri(share / p)}'>"
                               for p in s.get("pictures", []) if (share / p).is_file())
                out.append(f"<div><b>{_esc(s['series_id'])}</b> {_esc(s.get('kind'))} "
                           f"<span class='{_esc(s['status'])}'>{_esc(s['status'])}</span>{_checks_html(s['checks'])}{pics}</div>")
        out.append("</details>")
    out.append("</section>")
    return "".join(out)


def _audit_html(audit: dict) -> str:
    text = yaml.safe_dump(audit, sort_keys=False, allow_unicode=True) if audit else "no audit"
    return f"<section id='audit'><h2>Audit summary</h2><details><summary>share/audit.yaml</summary><pre>{_esc(text)}</pre></details></section>"


def write_report(out_dir: str | Path, *, verification: dict | None = None, log=None) -> Path:
    out_dir = Path(out_dir)
    target = out_dir / "share" / "qc" / "report.html"
    write_text(target, render(out_dir, verification=verification))
    if log:
        log.info("report written: share/qc/report.html")
    return target


def report_page(lay, *, log=None, config: dict | None = None) -> Path:
    """Rule ``report``: a leak pre-scan of share/ (its result is shown on the page;
    the ``verify`` rule is authoritative), then ``share/qc/report.html``."""
    from ..deid.verify import verify_share

    logger = log or get_logger("report")
    try:
        verification = verify_share(lay.root, config=config, output=lay.private_dir / "verify-prereport.json",
                                    log=lay.log("verify-prereport"))
    except Exception as exc:  # the final verify rule is authoritative; the report still renders
        if is_environment_error(exc):
            raise
        logger.warning("pre-report leak scan failed: %s", exc)
        verification = {"status": "not run", "hits": []}
    return write_report(lay.root, verification=verification, log=logger)
