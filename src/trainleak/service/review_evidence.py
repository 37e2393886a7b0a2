"""A copy audit's evidence on the review page: the matched-region picture and the edit.

An audit with a local-feature encoder (``--encoder copy``) writes, for each
flagged pair, ``evidence/pair-NNN.png`` (the two images side by side, the
verified matches and the copied region's outline) and ``pair-NNN.json`` (the
estimated edit); ``report.json`` lists them under ``copy_evidence``
(:mod:`trainleak.report.copy_evidence`). The page shows that picture under
the pair and the edit as facts, so a reviewer judges the match the report
scored, not only two thumbnails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainleak.service.review_images import ImageTable
from trainleak.service.review_items import Candidate, Shown


def edit_facts(edit: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the page's lines for an estimated edit (``Match.edit()``'s dict).

    Example:
        >>> edit_facts({"inliers": 41, "scale": 1.25, "rotation_degrees": -10.0,
        ...             "mirrored": True, "crop_box_fraction": [0.1, 0.2, 0.8, 0.9]})[:3]
        [('verified matches', '41'), ('scale', '1.25'), ('rotation', '-10.0°')]

    """
    box = edit.get("crop_box_fraction")
    crop = (
        "n/a"
        if not box
        else "x {:.2f}–{:.2f}, y {:.2f}–{:.2f} of the training image".format(
            box[0], box[2], box[1], box[3]
        )
    )
    return [
        ("verified matches", str(edit.get("inliers", "n/a"))),
        ("scale", str(edit.get("scale", "n/a"))),
        ("rotation", f"{edit.get('rotation_degrees', 'n/a')}°"),
        ("mirrored", "yes" if edit.get("mirrored") else "no"),
        ("crop box", crop),
    ]


def attach_copy_evidence(
    candidates: list[Candidate], entries: list[dict[str, Any]], folder: Path, images: ImageTable
) -> None:
    """Give each audit candidate its pair's evidence picture and edit facts, where drawn.

    Args:
        candidates: one report's audit candidates (changed in place).
        entries: the report's ``copy_evidence`` list.
        folder: the report folder (the entries' file names are relative to it).
        images: the review's image table; the picture is added to it by its
            absolute path, so a same-named file elsewhere cannot stand in for it.

    """
    by_synthetic = {str(e.get("synthetic")): e for e in entries}
    for c in candidates:
        e = by_synthetic.get(c.synthetic)
        if e is None:
            continue
        if "error" in e:
            c.facts.append(("evidence", f"not drawn ({e['error']})"))
            continue
        c.facts.extend(edit_facts(e.get("edit") or {}))
        if e.get("train") != c.train:
            c.facts.append(("evidence drawn against", str(e.get("train"))))
        if e.get("png"):
            path = str((folder / e["png"]).resolve())
            c.evidence = Shown(images.add(path, folder), path, "where the images match")
        if e.get("json"):
            c.facts.append(("evidence file", str(folder / e["json"])))
