"""The audit report as one self-contained HTML page.

No network: CSS is inline, plots are inline SVG, thumbnails are base64
``data:`` URIs. Every string from the report is escaped. With no thumbnail
function (``--redact``) no image data is embedded at all.
"""

from __future__ import annotations

import shlex
from typing import Any

from trainleak.report.html_parts import (
    Thumbnail,
    escape,
    img_tag,
    number,
    page,
    percent,
    skipped_table,
)
from trainleak.report.plots import svg_counts

#: Pairs, and leaked identities, the page shows (with thumbnails): the page
#: stays a few MB however many samples were audited.
TOP_PAIRS = 50


def verdict_sentence(report: dict[str, Any]) -> str:
    """Return the report's finding in one plain sentence."""
    s, t = report["summary"], report["threshold"]
    lo, hi = s["flagged_rate_ci95"]
    what = (
        f"{s['flagged']} of {s['n_synthetic']} synthetic samples ({percent(s['flagged_rate'])}, "
        f"95% CI {percent(lo)}-{percent(hi)}) are flagged as {FLAGGED_AS[_kind(report)]}"
    )
    if t["method"] == "holdout":
        n_hold = (report["inputs"].get("holdout") or {}).get("embedded", "?")
        if t.get("counted_over") == "people":
            n_hold = (
                f"{t.get('n_people', '?')} holdout people ({n_hold} photos; a person counts once)"
            )
        else:
            n_hold = f"{n_hold} holdout"
        how = (
            f", at a threshold of {number(t['value'])} calibrated on {n_hold} images "
            f"for a {percent(t['target_fpr'])} false-positive rate."
        )
        resolvable = t.get("resolvable_fpr")
        if resolvable is not None and t["target_fpr"] < resolvable:
            how = (
                f", at a threshold of {number(t['value'])}: the largest score of {n_hold} "
                f"images, which are too few to calibrate a {percent(t['target_fpr'])} "
                f"false-positive rate (they resolve {percent(resolvable)} at best; the real "
                "rate is unknown below that). Give a larger holdout."
            )
    elif t["method"] == "fixed":
        how = (
            f", at a fixed threshold of {number(t['value'])} given by the user. It is not "
            "calibrated: the rate of false flags is unknown."
        )
    else:
        how = (
            f", at the encoder's default threshold of {number(t['value'])}. It is uncalibrated "
            "for this data: give a holdout of real images not used in training to know the "
            "false-positive rate."
        )
    return what + how


def _kind(report: dict[str, Any]) -> str:
    """Return the encoder's kind, ``copy`` or ``identity`` (older reports read as copy)."""
    return "identity" if (report.get("encoder") or {}).get("kind") == "identity" else "copy"


#: What a flag means, by the encoder's kind: a copy encoder finds the same
#: picture; an identity encoder finds the same person, in any photo.
FLAGGED_AS = {
    "copy": "copies of training images (the same picture, possibly edited)",
    "identity": "the same person as someone in training (another photo of them, or a copy: "
    "a face encoder cannot tell the two apart)",
}

#: One plain line under each tile of the audit page.
TILE_NOTES = {
    "input": "images read and embedded; skipped files are listed at the end",
    "copy": "synthetic images that copy a training image",
    "identity": "synthetic images showing a training person",
    "leaked": "training people shown by at least one synthetic image",
    "dcr": "how often a synthetic image is closer to training than an unseen real image is: "
    "0.5 = no closer (fine), near 1 = copying",
    "ct": "a cell-by-cell test of the same: near 0 = fine, below -3 = copying",
}


def _card(title: str, value: Any, detail: str, note: str) -> str:
    return (
        f'<div class="card">{title}<b>{value}</b>{detail}'
        f'<div class="note">{escape(note)}</div></div>'
    )


def _cards(report: dict[str, Any]) -> str:
    s = report["summary"]
    kind = _kind(report)
    cards = []
    for name, counts in report["inputs"].items():
        if counts:
            cards.append(
                _card(
                    escape(name),
                    counts["embedded"],
                    f"{counts['files']} files, {counts['skipped']} skipped",
                    TILE_NOTES["input"],
                )
            )
    title = "flagged: copies" if kind == "copy" else "flagged: same person"
    cards.append(_card(title, s["flagged"], percent(s["flagged_rate"]), TILE_NOTES[kind]))
    if s.get("identities_in_train"):
        cards.append(
            _card(
                "leaked identities",
                len(s["leaked_identities"]),
                f"of {s['identities_in_train']} in training",
                TILE_NOTES["leaked"],
            )
        )
    dcr = s.get("dcr")
    if dcr:
        cards.append(
            _card(
                "DCR AUC",
                number(dcr["auc_synthetic_closer"], 3),
                "P(synthetic closer than holdout)",
                TILE_NOTES["dcr"],
            )
        )
    ct = s.get("meehan_ct")
    if ct and ct.get("value") is not None:
        cards.append(
            _card(
                "Meehan C<sub>T</sub>",
                number(ct["value"], 2),
                f"{ct['cells']} cells; &lt; -3 = copying",
                TILE_NOTES["ct"],
            )
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _per_sample(report: dict[str, Any]) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for m in report["matches"]:
        cur = chosen.get(m["synthetic"])
        if (
            cur is None
            or (m["flagged"] and not cur["flagged"])
            or (not cur["flagged"] and m.get("reviewed") and not cur.get("reviewed"))
            or (not cur["flagged"] and m["rank"] < cur["rank"] and not cur.get("reviewed"))
        ):
            chosen[m["synthetic"]] = m
    return sorted(chosen.values(), key=lambda m: (not m["flagged"], -(m["score"] or 0.0)))


def _pairs(rows: list[dict[str, Any]], thumbnail: Thumbnail | None, kind: str = "copy") -> str:
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
                f"<td>{img_tag(thumbnail, 'synthetic', m['synthetic'])}</td>"
                f"<td>{img_tag(thumbnail, 'train', m['train'])}</td>"
            )
        body.append(
            f'<tr class="{"flagged" if m["flagged"] else ""}" '
            f'data-review="{escape(m["synthetic"])}"><td>{i}</td>{imgs}'
            f'<td class="path">{escape(m["synthetic"])}</td>'
            f'<td class="path">{escape(m["train"])}</td>'
            f"<td>{escape(m.get('train_identity') or '')}</td><td>{number(m['similarity'])}</td>"
            f'<td>{number(m["score"])}</td><td class="review-cell">{_verdict(m, kind)}</td></tr>'
        )
    return f"<table>{head}{''.join(body)}</table>"


def _verdict(m: dict[str, Any], kind: str = "copy") -> str:
    """Return the verdict cell: the threshold's, or what a reviewer decided (who and when)."""
    text = ("FLAGGED: " + ("copy" if kind == "copy" else "same person")) if m["flagged"] else "ok"
    r = m.get("reviewed")
    if r:
        who = f"{escape(r['reviewer'])}, {escape(r['decided_at'])}"
        text += f'<br><span class="note">reviewed: {escape(r["decision"])} ({who})</span>'
    return text


def _identities(report: dict[str, Any], thumbnail: Thumbnail | None) -> str:
    leaked = report["summary"]["leaked_identities"]
    if not report["summary"].get("identities_in_train"):
        return "<p>The training set has no identity labels (use one sub-folder per person).</p>"
    if not leaked:
        return "<p>No training identity has a flagged synthetic match.</p>"
    rows = []
    for e in leaked[:TOP_PAIRS]:
        w = e["worst"]
        imgs = ""
        if thumbnail is not None:
            imgs = f"<td>{img_tag(thumbnail, 'synthetic', w['synthetic'])}</td>"
            imgs += f"<td>{img_tag(thumbnail, 'train', w['train'])}</td>"
        rows.append(
            f"<tr><td>{escape(e['identity'])}</td><td>{e['n_flagged']}</td>{imgs}"
            f'<td class="path">{escape(w["synthetic"])}</td><td>{number(w["score"])}</td></tr>'
        )
    head = "<tr><th>identity</th><th>flagged samples</th>"
    if thumbnail is not None:
        head += "<th>worst synthetic</th><th>its training match</th>"
    head += "<th>worst synthetic path</th><th>score</th></tr>"
    more = ""
    if len(leaked) > TOP_PAIRS:
        more = (
            f'<p class="note">The {TOP_PAIRS} identities with the most flagged samples of '
            f"{len(leaked)}; report.json lists them all.</p>"
        )
    return f"<table>{head}{''.join(rows)}</table>{more}"


def _table_note(report: dict[str, Any]) -> str:
    table = report.get("table")
    if not table:
        return ""
    return (
        f'<p class="note">Every synthetic sample\'s top-k neighbours ({table["rows"]} rows): '
        f"<code>{escape(table['file'])}</code> beside this page.</p>"
    )


def _how(report: dict[str, Any]) -> str:
    enc = report["encoder"]
    argv = report.get("argv") or []
    inputs = "".join(
        f"<li>{escape(k)}: <code>{escape(v.get('root'))}</code> ({v['files']} files, "
        f"{v['embedded']} embedded, {v['skipped']} skipped)</li>"
        for k, v in report["inputs"].items()
        if v
    )
    return (
        f"<ul><li>trainleak {escape(report.get('version'))}, {escape(report.get('created'))}, "
        f"device {escape(report.get('device'))}</li>"
        f"<li>command: <code>{escape(shlex.join(str(a) for a in argv))}</code></li>"
        f"<li>encoder: <b>{escape(enc['name'])}</b> v{escape(enc.get('version'))}, "
        f"dim {escape(enc['dim'])}, "
        f"{escape(enc['metric'])}, options <code>{escape(enc.get('options'))}</code></li>"
        f"<li>{escape(enc.get('paper'))}</li>{inputs}</ul>"
        "<details><summary>all settings</summary>"
        f"<pre>{escape(report.get('settings'))}</pre></details>"
    )


def render_audit_html(
    report: dict[str, Any], thumbnail: Thumbnail | None, matched: str = ""
) -> str:
    """Render the ``audit`` report; ``thumbnail=None`` embeds no images (redacted).

    ``matched``: an HTML section drawn after the pairs (where copies match, see
    :mod:`trainleak.report.copy_evidence`).
    """
    s, t = report["summary"], report["threshold"]
    rows = _per_sample(report)
    hist = svg_counts(
        report["score_histogram"],
        t["value"],
        title="Leak score: synthetic vs holdout",
        x_label=s.get("score_note", ""),
    )
    redacted = '<p class="note">Thumbnails omitted (--redact).</p>' if thumbnail is None else ""
    dcr = s.get("dcr")
    extra = ""
    if dcr:
        extra += f'<p class="note">{escape(dcr["note"])}</p>'
    if s.get("meehan_ct"):
        extra += f'<p class="note">{escape(s["meehan_ct"]["note"])}</p>'
    leak_class = "verdict leak" if s["flagged"] else "verdict"
    return page(
        "trainleak audit report",
        f"<h1>trainleak audit report</h1>"
        f'<p class="{leak_class}">{escape(verdict_sentence(report))}</p>'
        f'<p class="note">Threshold: {escape(t["note"])}</p>{redacted}'
        f"<h2>Summary</h2>{_cards(report)}{extra}"
        f"<h2>Score distributions</h2>{hist}"
        f'<p class="note">{escape(s.get("score_note"))}; a synthetic sample is flagged when its '
        f"score is above the threshold.</p>"
        f"<h2>Closest pairs (top {min(TOP_PAIRS, len(rows))} of {s['n_synthetic']}, "
        "flagged first)</h2>"
        f"{_pairs(rows, thumbnail, _kind(report))}{_table_note(report)}{matched}"
        f"<h2>Training identities</h2>{_identities(report, thumbnail)}"
        f"<h2>Skipped files</h2>{skipped_table(report)}"
        f"<h2>How it was run</h2>{_how(report)}",
    )
