"""The cohort report: one HTML page (``share/qc/report.html``).

No network: styles and scripts are inline, nothing comes from a CDN. The
series table is embedded once as JSON and drawn by a small inline script that
renders only the rows in view (virtual scrolling), so a cohort of 50,000
series opens in a second or two; sorting and filtering work on the JSON. The
QC pictures stay the PNG files beside the page (``share/qc/<unit>/*.png``),
referenced by relative URLs and loaded lazily, only for rows in view: open
the page from share/qc/ (or a copy of the whole share/qc/ folder). Clicking a
row shows every check and the full pictures of that row's subject. The page
also shows totals per stage, the leak verification of share/ and the audit
summary. Everything shown comes from share/ or is a count; reasons are
stripped of paths.
"""
from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from ..errors import is_environment_error
from ..version import __version__
from ..dicomio import write_text
from ..logs import get_logger
from ..paths import layout
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
img.thumb{height:64px;width:auto;max-width:200px;border:1px solid #ccd;background:#000;margin-right:4px}img.full{max-width:100%;border:1px solid #ccd;background:#000;display:block;margin:4px 0}
.controls{display:flex;gap:10px;margin:0 0 10px;align-items:center}.controls input{padding:5px 8px;width:280px}
ul.checks{margin:0;padding-left:16px}ul.checks li{margin:1px 0}.muted{color:#6b7580;font-size:12px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
#series-scroll{height:70vh;min-height:300px;overflow:auto;border:1px solid #e6e9ee;contain:strict}
#series-table{table-layout:fixed}#series-table tbody tr.row{height:76px;cursor:pointer}#series-table tbody tr.row:hover{background:#f3f6fa}
#series-table td{overflow:hidden;white-space:nowrap;text-overflow:ellipsis}#series-table td .clip{white-space:normal;max-height:64px;overflow:hidden}
#series-table tr.spacer td{padding:0;border:0}h4{font-size:14px;margin:10px 0 4px}div.series{margin:6px 0 10px}
"""

JS = r"""
(function(){
  'use strict';
  var dataEl=document.getElementById('series-data'); if(!dataEl) return;
  var D=JSON.parse(dataEl.textContent);
  var U=D.units, C=D.checks, R=D.rows;            // row: [unit, series, kind, modality, status, n_outputs, [check ids], [pictures]]
  var N=R.length;
  var scroller=document.getElementById('series-scroll'), table=document.getElementById('series-table');
  var body=table.tBodies[0], q=document.getElementById('filter'), st=document.getElementById('status-filter');
  var count=document.getElementById('shown-count'), details=document.getElementById('details');
  var heads=table.tHead.rows[0].cells;
  function findings(r){
    var out=[]; for(var k=0;k<r[6].length;k++){var c=C[r[6][k]]; if(c[1]!=='pass') out.push(c[0]+': '+c[2]);}
    return out.join('; ');
  }
  function findingsKey(r){
    var f=0,w=0; for(var k=0;k<r[6].length;k++){var s=C[r[6][k]][1]; if(s==='fail') f++; else if(s==='warn') w++;}
    return f*1000+w;
  }
  var KEYS=[function(r){return U[r[0]][1];},function(r){return U[r[0]][0];},function(r){return r[1];},
    function(r){return r[2];},function(r){return r[3];},function(r){return r[4];},findingsKey,
    function(r){return r[5];},function(r){return r[7].length;}];
  var hay=null;
  function haystack(i){
    if(!hay){hay=new Array(N);}
    if(hay[i]===undefined){var r=R[i]; hay[i]=[U[r[0]][1],U[r[0]][0],r[1],r[2],r[3],r[4],findings(r)].join('\u0001').toLowerCase();}
    return hay[i];
  }
  var order=[]; for(var i=0;i<N;i++) order.push(i);
  var view=order.slice(), rowH=0, first=-1, last=-1, OVERSCAN=8;
  function el(tag,cls,text){var e=document.createElement(tag); if(cls) e.className=cls; if(text!==undefined) e.textContent=text; return e;}
  function img(src,cls,alt){var e=document.createElement('img'); e.className=cls; e.alt=alt; e.loading='lazy'; e.decoding='async'; e.src=src; return e;}
  function rowEl(i){
    var r=R[i], tr=document.createElement('tr'), f=findings(r);
    tr.className='row'; tr.setAttribute('data-i',i); tr.setAttribute('data-status',r[4]);
    tr.appendChild(el('td','',U[r[0]][1])); var tu=el('td','',U[r[0]][0]); tu.title=U[r[0]][0]; tr.appendChild(tu); tr.appendChild(el('td','',r[1]));
    tr.appendChild(el('td','',r[2])); tr.appendChild(el('td','',r[3])); tr.appendChild(el('td',r[4],r[4]));
    var td=el('td'); td.title=f; td.appendChild(el('div','clip',f||'all checks pass')); tr.appendChild(td);
    tr.appendChild(el('td','',String(r[5])));
    td=el('td'); for(var k=0;k<r[7].length&&k<2;k++) td.appendChild(img(r[7][k],'thumb',r[1]+' picture')); tr.appendChild(td);
    return tr;
  }
  function spacer(h){var tr=document.createElement('tr'); tr.className='spacer'; var td=document.createElement('td'); td.colSpan=heads.length; tr.style.height=h+'px'; tr.appendChild(td); return tr;}
  function draw(force){
    if(!rowH){
      if(!view.length){rowH=0;}
      else{body.textContent=''; var probe=rowEl(view[0]); body.appendChild(probe); rowH=probe.getBoundingClientRect().height||76;}
    }
    var h=rowH||76, top=scroller.scrollTop, height=scroller.clientHeight||600;
    var a=Math.max(0,Math.floor(top/h)-OVERSCAN), b=Math.min(view.length,Math.ceil((top+height)/h)+OVERSCAN);
    if(!force&&a===first&&b===last) return;
    first=a; last=b;
    var frag=document.createDocumentFragment();
    frag.appendChild(spacer(a*h));
    for(var k=a;k<b;k++) frag.appendChild(rowEl(view[k]));
    frag.appendChild(spacer((view.length-b)*h));
    body.textContent=''; body.appendChild(frag);
  }
  function apply(){
    var text=(q.value||'').toLowerCase(), s=st.value;
    if(!text&&!s){view=order.slice();}
    else{view=[]; for(var k=0;k<order.length;k++){var i=order[k]; if((!s||R[i][4]===s)&&(!text||haystack(i).indexOf(text)>=0)) view.push(i);}}
    count.textContent=view.length+' of '+N+' series shown';
    count.setAttribute('data-shown',view.length); count.setAttribute('data-total',N);
    scroller.scrollTop=0; draw(true);
  }
  function sortBy(col,asc){
    var key=KEYS[col], keys=new Array(N), num=true;
    for(var i=0;i<N;i++){keys[i]=key(R[i]); if(typeof keys[i]!=='number') num=false;}
    var coll=new Intl.Collator(undefined,{numeric:true});
    order.sort(function(x,y){var c=num?keys[x]-keys[y]:coll.compare(keys[x],keys[y]); if(!c) c=x-y; return asc?c:-c;});
    apply();
  }
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc');
      Array.prototype.forEach.call(heads,function(c){c.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc'); sortBy(col,asc);
    });
  });
  var bySubject=null;
  function showSubject(i){
    var subject=U[R[i][0]][1];
    if(!bySubject){bySubject={}; for(var k=0;k<N;k++){var sj=U[R[k][0]][1]; (bySubject[sj]=bySubject[sj]||[]).push(k);}}
    var rows=bySubject[subject]||[], frag=document.createDocumentFragment(), unit=null;
    frag.appendChild(el('h3','',subject+' \u00b7 '+rows.length+' series'));
    for(var k=0;k<rows.length&&k<500;k++){
      var r=R[rows[k]];
      if(U[r[0]][0]!==unit){unit=U[r[0]][0]; frag.appendChild(el('h4','',unit));}
      var div=el('div','series'); var b=el('b','',r[1]); div.appendChild(b);
      div.appendChild(document.createTextNode(' '+r[2]+' ')); div.appendChild(el('span',r[4],r[4]));
      var ul=el('ul','checks');
      for(var c=0;c<r[6].length;c++){var ck=C[r[6][c]], li=el('li'); li.appendChild(el('span',ck[1],ck[1])); li.appendChild(document.createTextNode(' '+ck[0]+': '+ck[2])); ul.appendChild(li);}
      div.appendChild(ul);
      for(var p=0;p<r[7].length;p++) div.appendChild(img(r[7][p],'full',r[1]));
      frag.appendChild(div);
    }
    details.textContent=''; details.appendChild(frag); details.scrollIntoView({block:'start'});
  }
  body.addEventListener('click',function(e){var tr=e.target.closest('tr.row'); if(tr) showSubject(+tr.getAttribute('data-i'));});
  var pending=false;
  scroller.addEventListener('scroll',function(){if(!pending){pending=true; requestAnimationFrame(function(){pending=false; draw(false);});}});
  q.addEventListener('input',apply); st.addEventListener('change',apply);
  window.addEventListener('resize',function(){draw(true);});
  apply();
})();
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame()


def stage_totals(out_dir: Path, units: pd.DataFrame, qcs: list[dict]) -> dict:
    """Counts per stage, from the private index and the stage manifests (numbers only)."""
    lay = layout(out_dir)
    totals: dict = {}
    inst = lay.instances_table
    n_inst = len(pd.read_parquet(inst, columns=["path"])) if inst.is_file() else 0
    unreadable = _read_csv(lay.unreadable_table)
    totals["files found"] = n_inst + len(unreadable)
    totals["files indexed"] = n_inst
    totals["files not read"] = len(unreadable)
    totals["not read, by reason"] = dict(Counter(_reason_category(r) for r in unreadable.get("reason", [])))
    left_out = _read_csv(lay.left_out_table)
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


def render(out_dir: Path, *, verification: dict | None = None, embed_pictures: bool = False) -> str:
    """The report's HTML text (``embed_pictures``: pictures as data URIs, config
    ``qc.report_pictures: embedded``; else the PNG files beside the page)."""
    lay = layout(out_dir)
    share = lay.share_dir
    units = _read_csv(lay.units_table)
    qcs = []
    for unit in units.get("unit", []):
        path = lay.share.qc_json(unit)
        if path.is_file():
            qcs.append(json.loads(path.read_text()))
    totals = stage_totals(lay.root, units, qcs)
    audit = {}
    if lay.audit_yaml.is_file():
        audit = yaml.safe_load(lay.audit_yaml.read_text()) or {}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>dicomprep cohort report</title><style>{CSS}</style></head><body>"
             f"<header><h1>dicomprep cohort report</h1><p>dicomprep {__version__} · pseudonymous identifiers only · "
             f"{len(units)} units</p></header><main>"]
    parts.append(_totals_html(totals))
    parts.append(_verification_html(verification))
    parts.append(_series_table_html(share, units, qcs, embed_pictures))
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


#: Columns of the series table (the JS keys follow this order) and their widths.
SERIES_COLUMNS = ("subject", "unit", "series", "kind", "modality", "status", "findings", "outputs", "pictures")
COLGROUP = "<colgroup>" + "".join(f"<col style='width:{w}%'>" for w in (9, 16, 7, 8, 6, 6, 27, 5, 16)) + "</colgroup>"


def picture_src(share: Path, rel: str, *, embed: bool = False) -> str | None:
    """``rel`` (a path under share/, as qc.json lists it) as a URL relative to
    share/qc/report.html (``embed``: a ``data:`` URI of the PNG), or None when
    the file is missing (no broken image)."""
    path = share / rel
    if not path.is_file():
        return None
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    parts = Path(rel).parts
    return "/".join(parts[1:]) if parts and parts[0] == "qc" else "../" + "/".join(parts)


def series_data(share: Path, units: pd.DataFrame, qcs: list[dict], *, embed_pictures: bool = False) -> dict:
    """The series table as compact JSON-ready data, embedded once in the page.

    ``units``: ``[unit, subject]`` pairs; ``checks``: distinct ``[name, status,
    message]`` triples (a cohort repeats the same sentences, so each is stored
    once); ``rows``: ``[unit index, series_id, kind, modality, status,
    number of outputs, [check indices], [picture URLs]]``, in unit then
    series order. Picture URLs point at the PNG files beside the report, or
    are ``data:`` URIs with ``embed_pictures`` (a page that travels alone,
    e.g. in Snakemake's report.zip; it grows by the pictures' size).
    """
    subj = dict(zip(units.get("unit", []), units.get("subject", [])))
    unit_ids: dict[str, int] = {}
    check_ids: dict[tuple, int] = {}
    rows = []
    for q in qcs:
        u = unit_ids.setdefault(q["unit"], len(unit_ids))
        for s in q.get("series", []):
            cks = []
            for c in s.get("checks", []):
                key = (str(c["name"]), str(c["status"]), str(c["message"]))
                cks.append(check_ids.setdefault(key, len(check_ids)))
            pics = [src for src in (picture_src(share, p, embed=embed_pictures) for p in s.get("pictures", [])) if src]
            rows.append([u, str(s["series_id"]), "" if s.get("kind") is None else str(s.get("kind")),
                         "" if s.get("modality") is None else str(s.get("modality")), str(s["status"]),
                         len(s.get("outputs", [])), cks, pics])
    return {"units": [[unit, str(subj.get(unit, ""))] for unit in unit_ids],
            "checks": [list(k) for k in check_ids], "rows": rows}


def _json_script(element_id: str, data) -> str:
    """Data embedded once, as a JSON script element (``<`` escaped so no text can close it)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return f"<script type='application/json' id='{element_id}'>{text}</script>"


def _series_table_html(share: Path, units: pd.DataFrame, qcs: list[dict], embed_pictures: bool = False) -> str:
    """A table that draws only the rows in view (virtual scrolling, see JS):
    any number of series opens at once; pictures load when their row shows."""
    data = series_data(share, units, qcs, embed_pictures=embed_pictures)
    head = "".join(f"<th>{h}</th>" for h in SERIES_COLUMNS)
    return ("<section id='series'><h2>Series</h2><div class='controls'>"
            "<input id='filter' type='search' placeholder='filter: subject, kind, finding…' aria-label='filter series'>"
            "<select id='status-filter' aria-label='status'><option value=''>any status</option><option>pass</option>"
            "<option>warn</option><option>fail</option></select>"
            f"<span id='shown-count' class='muted'>{len(data['rows'])} series</span></div>"
            "<p class='muted'>Click a row to see every check and the full pictures of that subject below.</p>"
            f"<div id='series-scroll'><table id='series-table'>{COLGROUP}<thead><tr>{head}</tr></thead><tbody></tbody></table></div>"
            f"{_json_script('series-data', data)}</section>"
            "<section id='subjects'><h2>Subject details</h2><div id='details'>"
            "<p class='muted'>Click a row of the series table.</p></div></section>")


def _audit_html(audit: dict) -> str:
    text = yaml.safe_dump(audit, sort_keys=False, allow_unicode=True) if audit else "no audit"
    return f"<section id='audit'><h2>Audit summary</h2><details><summary>share/audit.yaml</summary><pre>{_esc(text)}</pre></details></section>"


def write_report(out_dir: str | Path, *, verification: dict | None = None, log=None,
                 config: dict | None = None) -> Path:
    """Write ``share/qc/report.html`` (see :func:`render`); ``config``: the
    workflow config (``qc.report_pictures``: ``files``, the default, or ``embedded``)."""
    target = layout(out_dir).report_html
    embed = ((config or {}).get("qc") or {}).get("report_pictures", "files") == "embedded"
    text = render(Path(out_dir), verification=verification, embed_pictures=embed)
    write_text(target, text)
    if log:
        log.info("report written: share/qc/report.html (%.1f MB)", len(text.encode("utf-8")) / 1e6)
    return target


def report_page(lay, *, log=None, config: dict | None = None, workers: int = 1) -> Path:
    """Rule ``report``: a leak pre-scan of share/ (its result is shown on the page;
    the ``verify`` rule is authoritative), then ``share/qc/report.html``."""
    from ..verify.share import verify_share

    logger = log or get_logger("report")
    # the text scan only: the pixel OCR is left to the verify rule, which also reads this page
    prescan_config = {**(config or {}), "verify": {**((config or {}).get("verify") or {}), "ocr": {"enabled": False}}}
    try:
        verification = verify_share(lay.root, config=prescan_config,
                                    output=lay.private_dir / "verify-prereport.json",
                                    log=lay.log("verify-prereport"), workers=workers)
    except Exception as exc:  # the final verify rule is authoritative; the report still renders
        if is_environment_error(exc):
            raise
        logger.warning("pre-report leak scan failed: %s", exc)
        verification = {"status": "not run", "hits": []}
    return write_report(lay.root, verification=verification, log=logger, config=config)
