"""The HTML page of a report: tables, embedded images, run metadata (one self-contained file)."""

from __future__ import annotations

import base64
import datetime
import html
import math

import numpy as np

from kt_stardist.report.style import COLORS, LABELS, MARKERS, MAX_TABLE_ROWS

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em} figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:.9em;color:#333;max-width:60em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0} th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3} tr.total td{font-weight:bold;background:#fafafa} td.k{text-align:left}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}
.card b{display:block;font-size:1.5em} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #777;vertical-align:middle;margin-right:.3em}
"""

#: sets ``data-images-loaded="ok/total"`` on <body> once the page has loaded (for headless checks)
_SCRIPT = ("addEventListener('load',function(){var m=document.images,k=0;for(var i=0;i<m.length;i++)"
           "if(m[i].complete&&m[i].naturalWidth>0)k++;document.body.dataset.imagesLoaded=k+'/'+m.length;});")


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, key="") -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.1f}" if key == "rmse_nm" else f"{v:.3f}"
    return str(v)


_HEADERS = {"t": "frame", "detections": "detections", "pairs": "pairs", "n_gt": "ground truth",
            "tp": "TP", "fp": "FP", "fn": "misses", "precision": "precision", "recall": "recall",
            "f1": "F1", "rmse_nm": "RMSE (nm)"}


def _table(rows, overall) -> str:
    keys = [k for k in _HEADERS if k in overall]
    head = "".join(f"<th>{_esc(_HEADERS[k])}</th>" for k in keys)
    body = []
    shown = rows[:MAX_TABLE_ROWS]
    for r in shown:
        body.append("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(k), k))}</td>" for k in keys) + "</tr>")
    if len(rows) > len(shown):
        body.append(f'<tr><td class="k" colspan="{len(keys)}">… {len(rows) - len(shown)} more frames '
                    "in summary.json</td></tr>")
    body.append('<tr class="total">' + "".join(f"<td>{_esc(_fmt(overall.get(k), k))}</td>" for k in keys) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d) -> str:
    rows = "".join(f'<tr><td class="k">{_esc(k)}</td><td class="k">{_esc(v)}</td></tr>' for k, v in d.items())
    return f"<table>{rows}</table>"


def _img(png: bytes, name: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}" title="{_esc(name)}">'


def _box_text(box, voxel_size_um) -> str:
    parts = []
    for axis, s, v in zip("zyx", box, voxel_size_um):
        parts.append(f"{axis} {s.start}–{s.stop - 1} px ({(s.stop - s.start) * v:.1f} µm)")
    return ", ".join(parts)


def _legend_html(kinds) -> str:
    return "; ".join(f'<span class="sw" style="background:{COLORS[k]}"></span>{_esc(LABELS[k])} '
                     f'({"circle" if MARKERS[k] == "o" else "square" if MARKERS[k] == "s" else "triangle"})'
                     for k in kinds)


def _json_ready(x):
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _html(title, frame, shape, vs, overall, rows, figures, meta, has_gt, dists) -> str:
    from kt_stardist import __version__

    title = title or "kt-stardist report"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    n_t, n_z, n_y, n_x, n_c = shape
    cards = [("detections", overall["detections"])]
    if "pairs" in overall:
        cards.append(("sister pairs", overall["pairs"]))
    if len(dists):
        cards.append(("median sister distance", f"{np.median(dists):.2f} µm"))
    if has_gt:
        cards += [("precision", _fmt(overall["precision"])), ("recall", _fmt(overall["recall"])),
                  ("F1", _fmt(overall["f1"])), ("RMSE", f"{_fmt(overall['rmse_nm'], 'rmse_nm')} nm")]
    card_html = "".join(f'<div class="card">{_esc(k)}<b>{_esc(v)}</b></div>' for k, v in cards)

    fig_html = []
    for name, png, cap, alt in figures:
        fig_html.append(f"<figure>{_img(png, name, alt)}<figcaption>{cap} "
                        f"(Also saved as <code>{_esc(name)}</code>.)</figcaption></figure>")
    projections = fig_html[:1]
    rest = fig_html[1:]

    run = {}
    run["model"] = meta.get("model", "not recorded")
    thresholds = meta.get("thresholds")
    extra = {k: v for k, v in meta.items() if k not in ("model", "thresholds", "command")}
    run.update(extra)
    run["kt-stardist version"] = __version__
    run["created"] = now
    thr_html = ""
    if isinstance(thresholds, dict) and thresholds:
        thr_html = "<h3>Thresholds</h3>" + _kv_table(thresholds)
    elif thresholds is not None:
        run["thresholds"] = thresholds
    command = meta.get("command")
    cmd_html = f"<h3>Command</h3><pre>{_esc(command)}</pre>" if command else ""
    score_note = ""
    if has_gt:
        score_note = ("<p class=\"meta\">Precision = TP / detections, recall = TP / ground truth, "
                      "F1 = 2 TP / (2 TP + FP + misses); RMSE: distance between matched points, nm.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_CSS}</style>
<script>{_SCRIPT}</script></head>
<body>
<h1>{_esc(title)}</h1>
<p class="meta">Image {n_t} frame(s) × {n_z} × {n_y} × {n_x} px (z × y × x), {n_c} channel(s);
voxel {vs[0]:g} × {vs[1]:g} × {vs[2]:g} µm. Created {_esc(now)} by kt-stardist {_esc(__version__)}.</p>
<div class="cards">{card_html}</div>
<h2>Detections in frame {frame}</h2>
{''.join(projections)}
<h2>Counts and scores per frame</h2>
{_table(rows, overall)}
{score_note}
{('<h2>Tracks and distributions</h2>' + ''.join(rest)) if rest else ''}
<h2>Run</h2>
{_kv_table(run)}
{thr_html}
{cmd_html}
</body></html>
"""
