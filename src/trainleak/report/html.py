"""The audit report as one self-contained HTML page.

No network: CSS is inline, plots are inline SVG, thumbnails are base64
``data:`` URIs. Every string from the report is escaped. With no thumbnail
function (``--redact``) no image data is embedded at all.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shlex
from collections import Counter
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

from trainleak.report.plots import svg_histogram

Thumbnail = Callable[[str, str], "str | None"]

TOP_PAIRS = 50

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1150px;color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.verdict{font-size:1.05rem;background:#f5f7fa;border-left:4px solid #0072B2;padding:.7rem 1rem}
.verdict.leak{border-left-color:#D55E00}.note{color:#555;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;
padding:.6rem .9rem;min-width:150px}.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;width:100%;font-size:.88rem}th,td{border-bottom:1px solid #e3e3e3;
padding:.3rem .4rem;text-align:left;vertical-align:middle}th{background:#fafafa}
tr.flagged{background:#fdeee6}td.path{word-break:break-all;max-width:260px}
img.thumb{width:88px;height:88px;object-fit:contain;background:#eee;border-radius:3px}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px;font-size:.85rem}
pre{padding:.6rem;white-space:pre-wrap;word-break:break-all}
@media print{body{margin:0}.card{break-inside:avoid}tr{break-inside:avoid}}
"""


def thumbnail_data_uri(path: str, size: int = 96) -> str | None:
    """Return a JPEG ``data:`` URI thumbnail of an image file, or ``None``.

    A ``#k`` face-index suffix is stripped when the file without it exists.
    Never raises for a bad or missing file.
    """
    if "#" in path and not os.path.exists(path):
        path = path.rsplit("#", 1)[0]
    try:
        with Image.open(path) as src:
            src.seek(0)
            im = ImageOps.exif_transpose(src).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:  # noqa: BLE001 - a thumbnail is never worth a crash
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: Any, digits: int = 4) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"


def embedded_thumbnails(redact: bool) -> Thumbnail | None:
    """Return the thumbnail maker for a report page: data URIs, or none when redacted."""
    return None if redact else (lambda _role, path: thumbnail_data_uri(path))


def _img(thumbnail: Thumbnail | None, role: str, path: str | None) -> str:
    if thumbnail is None or not path:
        return ""
    uri = thumbnail(role, path)
    if uri is None:
        return '<span class="note">(unreadable)</span>'
    return f'<img class="thumb" src="{uri}" alt="{_e(role)}">'


def verdict_sentence(report: dict[str, Any]) -> str:
    """Return the report's finding in one plain sentence."""
    s, t = report["summary"], report["threshold"]
    lo, hi = s["flagged_rate_ci95"]
    what = (
        f"{s['flagged']} of {s['n_synthetic']} synthetic samples ({_pct(s['flagged_rate'])}, "
        f"95% CI {_pct(lo)}-{_pct(hi)}) are flagged as copies or same-identity look-alikes "
        "of training samples"
    )
    if t["method"] == "holdout":
        n_hold = (report["inputs"].get("holdout") or {}).get("embedded", "?")
        how = (
            f", at a threshold of {_num(t['value'])} calibrated on {n_hold} holdout images "
            f"for a {_pct(t['target_fpr'])} false-positive rate."
        )
    elif t["method"] == "fixed":
        how = (
            f", at a fixed threshold of {_num(t['value'])} given by the user. It is not "
            "calibrated: the rate of false flags is unknown."
        )
    else:
        how = (
            f", at the encoder's default threshold of {_num(t['value'])}. It is uncalibrated "
            "for this data: give a holdout of real images not used in training to know the "
            "false-positive rate."
        )
    return what + how


def _cards(report: dict[str, Any]) -> str:
    s = report["summary"]
    cards = []
    for name, counts in report["inputs"].items():
        if counts:
            cards.append(
                f'<div class="card">{_e(name)}<b>{counts["embedded"]}</b>'
                f"{counts['files']} files, {counts['skipped']} skipped</div>"
            )
    cards.append(f'<div class="card">flagged<b>{s["flagged"]}</b>{_pct(s["flagged_rate"])}</div>')
    if s.get("identities_in_train"):
        cards.append(
            f'<div class="card">leaked identities<b>{len(s["leaked_identities"])}</b>'
            f"of {s['identities_in_train']} in training</div>"
        )
    dcr = s.get("dcr")
    if dcr:
        cards.append(
            f'<div class="card">DCR AUC<b>{_num(dcr["auc_synthetic_closer"], 3)}</b>'
            "P(synthetic closer than holdout)</div>"
        )
    ct = s.get("meehan_ct")
    if ct and ct.get("value") is not None:
        cards.append(
            f'<div class="card">Meehan C<sub>T</sub><b>{_num(ct["value"], 2)}</b>'
            f"{ct['cells']} cells; &lt; -3 = copying</div>"
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _per_sample(report: dict[str, Any]) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for m in report["matches"]:
        cur = chosen.get(m["synthetic"])
        if (
            cur is None
            or (m["flagged"] and not cur["flagged"])
            or (not cur["flagged"] and m["rank"] < cur["rank"])
        ):
            chosen[m["synthetic"]] = m
    return sorted(chosen.values(), key=lambda m: (not m["flagged"], -(m["score"] or 0.0)))


def _pairs(rows: list[dict[str, Any]], thumbnail: Thumbnail | None) -> str:
    if not rows:
        return "<p>No synthetic samples were embedded.</p>"
    head = "<tr><th>#</th>"
    if thumbnail is not None:
        head += "<th>synthetic</th><th>training</th>"
    head += "<th>synthetic path</th><th>training path</th><th>identity</th>"
    head += "<th>similarity</th><th>score</th><th>verdict</th></tr>"
    body = []
    for i, m in enumerate(rows[:TOP_PAIRS], start=1):
        imgs = ""
        if thumbnail is not None:
            imgs = (
                f"<td>{_img(thumbnail, 'synthetic', m['synthetic'])}</td>"
                f"<td>{_img(thumbnail, 'train', m['train'])}</td>"
            )
        body.append(
            f'<tr class="{"flagged" if m["flagged"] else ""}"><td>{i}</td>{imgs}'
            f'<td class="path">{_e(m["synthetic"])}</td><td class="path">{_e(m["train"])}</td>'
            f"<td>{_e(m.get('train_identity') or '')}</td><td>{_num(m['similarity'])}</td>"
            f"<td>{_num(m['score'])}</td><td>{'FLAGGED' if m['flagged'] else 'ok'}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _identities(report: dict[str, Any], thumbnail: Thumbnail | None) -> str:
    leaked = report["summary"]["leaked_identities"]
    if not report["summary"].get("identities_in_train"):
        return "<p>The training set has no identity labels (use one sub-folder per person).</p>"
    if not leaked:
        return "<p>No training identity has a flagged synthetic match.</p>"
    rows = []
    for e in leaked:
        w = e["worst"]
        imgs = ""
        if thumbnail is not None:
            imgs = f"<td>{_img(thumbnail, 'synthetic', w['synthetic'])}</td>"
            imgs += f"<td>{_img(thumbnail, 'train', w['train'])}</td>"
        rows.append(
            f"<tr><td>{_e(e['identity'])}</td><td>{e['n_flagged']}</td>{imgs}"
            f'<td class="path">{_e(w["synthetic"])}</td><td>{_num(w["score"])}</td></tr>'
        )
    head = "<tr><th>identity</th><th>flagged samples</th>"
    if thumbnail is not None:
        head += "<th>worst synthetic</th><th>its training match</th>"
    head += "<th>worst synthetic path</th><th>score</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _skipped(report: dict[str, Any]) -> str:
    skipped = report.get("skipped") or []
    if not skipped:
        return "<p>No files skipped.</p>"
    reasons = Counter(s["reason"] for s in skipped)
    summary = "".join(f"<li>{n} &times; {_e(r)}</li>" for r, n in reasons.most_common())
    rows = "".join(
        f'<tr><td>{_e(s["set"])}</td><td class="path">{_e(s["path"])}</td>'
        f"<td>{_e(s['reason'])}</td></tr>"
        for s in skipped
    )
    return (
        f"<ul>{summary}</ul><table><tr><th>set</th><th>path</th><th>reason</th></tr>{rows}</table>"
    )


def _how(report: dict[str, Any]) -> str:
    enc = report["encoder"]
    argv = report.get("argv") or []
    inputs = "".join(
        f"<li>{_e(k)}: <code>{_e(v.get('root'))}</code> ({v['files']} files, "
        f"{v['embedded']} embedded, {v['skipped']} skipped)</li>"
        for k, v in report["inputs"].items()
        if v
    )
    return (
        f"<ul><li>trainleak {_e(report.get('version'))}, {_e(report.get('created'))}, "
        f"device {_e(report.get('device'))}</li>"
        f"<li>command: <code>{_e(shlex.join(str(a) for a in argv))}</code></li>"
        f"<li>encoder: <b>{_e(enc['name'])}</b> v{_e(enc.get('version'))}, dim {_e(enc['dim'])}, "
        f"{_e(enc['metric'])}, options <code>{_e(enc.get('options'))}</code></li>"
        f"<li>{_e(enc.get('paper'))}</li>{inputs}</ul>"
        f"<details><summary>all settings</summary><pre>{_e(report.get('settings'))}</pre></details>"
    )


def render_audit_html(report: dict[str, Any], thumbnail: Thumbnail | None) -> str:
    """Render the ``audit`` report; ``thumbnail=None`` embeds no images (redacted)."""
    s, t = report["summary"], report["threshold"]
    rows = _per_sample(report)
    synth_scores = [float(m["score"]) for m in rows if m.get("score") is not None]
    hold_scores = [float(h["score"]) for h in report.get("holdout_scores") or []]
    series = {"synthetic": synth_scores}
    if hold_scores:
        series["holdout (not in training)"] = hold_scores
    hist = svg_histogram(
        series,
        t["value"],
        title="Leak score: synthetic vs holdout",
        x_label=s.get("score_note", ""),
    )
    redacted = '<p class="note">Thumbnails omitted (--redact).</p>' if thumbnail is None else ""
    dcr = s.get("dcr")
    extra = ""
    if dcr:
        extra += f'<p class="note">{_e(dcr["note"])}</p>'
    if s.get("meehan_ct"):
        extra += f'<p class="note">{_e(s["meehan_ct"]["note"])}</p>'
    leak_class = "verdict leak" if s["flagged"] else "verdict"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>trainleak audit report</title><style>{_CSS}</style></head><body>"
        f"<h1>trainleak audit report</h1>"
        f'<p class="{leak_class}">{_e(verdict_sentence(report))}</p>'
        f'<p class="note">Threshold: {_e(t["note"])}</p>{redacted}'
        f"<h2>Summary</h2>{_cards(report)}{extra}"
        f"<h2>Score distributions</h2>{hist}"
        f'<p class="note">{_e(s.get("score_note"))}; a synthetic sample is flagged when its '
        f"score is above the threshold.</p>"
        f"<h2>Closest pairs (top {min(TOP_PAIRS, len(rows))} of {len(rows)}, flagged first)</h2>"
        f"{_pairs(rows, thumbnail)}"
        f"<h2>Training identities</h2>{_identities(report, thumbnail)}"
        f"<h2>Skipped files</h2>{_skipped(report)}"
        f"<h2>How it was run</h2>{_how(report)}"
        "</body></html>"
    )
