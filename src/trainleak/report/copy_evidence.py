"""Evidence a person can show for a copy: where two images match, and the edit between them.

For each flagged pair of a ``local`` encoder (``--encoder copy``) the pair is
matched again from the two files (the same features and verification the
audit scored, see :func:`trainleak.encoders.copydetect.verify`) and drawn
side by side: the generated image on the left, the training image on the
right, a line for each verified keypoint match, and the outline of the
generated image's frame on the training image (the copied region, after
undoing the crop, scale, rotation and mirroring). Next to each PNG, a JSON
file holds the estimated edit (scale, rotation, crop box as fractions of the
training image, mirrored, inliers) and both paths, so that an artist can
attach the pair to a complaint and anyone can re-run the match.

With ``--redact`` no picture is written: the JSON files and the report keep
the numbers only.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from trainleak.encoders.copydetect import Match, verify
from trainleak.encoders.keypoints import Features, extract
from trainleak.images import load_image

log = logging.getLogger(__name__)

#: Pairs drawn per report (the flagged ones, best first).
MAX_PAIRS = 50
#: Match lines drawn per pair (every inlier counts; more lines hide the pictures).
MAX_LINES = 80


def _features(path: str, options: dict[str, Any]) -> tuple[np.ndarray, Features]:
    image = load_image(path)
    feat = extract(
        image,
        long_side=int(options["long_side"]),
        max_keypoints=int(options["max_keypoints"]),
        min_keypoints=1,
        contrast_threshold=float(options["contrast_threshold"]),
        min_side=int(options["min_side"]),
    )
    return image, feat


def match_files(query: str, train: str, options: dict[str, Any]) -> tuple[Match, Image.Image]:
    """Match two image files with an encoder's options; return the match and its drawing.

    Raises:
        OSError, ValueError: a file cannot be read or decoded.
        trainleak.encoders.EncodeSkip: an image has no keypoints.

    """
    q_img, q = _features(query, options)
    t_img, t = _features(train, options)
    match = verify(q, t, ratio=float(options["ratio"]), ransac_frac=float(options["ransac_frac"]))
    return match, draw_match(q_img, t_img, match)


def _working(image: np.ndarray, wh: tuple[float, float]) -> Image.Image:
    return Image.fromarray(image).convert("RGB").resize((round(wh[0]), round(wh[1])))


def draw_match(query: np.ndarray, train: np.ndarray, match: Match) -> Image.Image:
    """Draw the pair side by side at working size: match lines and the copied region's outline."""
    left = _working(query, match.query_wh)
    right = _working(train, match.train_wh)
    gap = 12
    height = max(left.height, right.height)
    canvas = Image.new("RGB", (left.width + gap + right.width, height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    dx = left.width + gap
    qxy = np.asarray(match.query_xy, np.float64)
    if match.mirrored and len(qxy):
        # The fit is of the mirror image; draw each point where it is in the query itself.
        qxy = qxy.copy()
        qxy[:, 0] = match.query_wh[0] - 1 - qxy[:, 0]
    step = max(1, len(qxy) // MAX_LINES)
    for (x0, y0), (x1, y1) in list(zip(qxy, match.train_xy, strict=True))[::step]:
        draw.line([(x0, y0), (x1 + dx, y1)], fill=(0, 200, 90), width=1)
        draw.ellipse([x0 - 2, y0 - 2, x0 + 2, y0 + 2], outline=(0, 120, 255))
        draw.ellipse([x1 + dx - 2, y1 - 2, x1 + dx + 2, y1 + 2], outline=(0, 120, 255))
    if match.transform is not None:
        outline = [(float(x) + dx, float(y)) for x, y in match.query_outline()]
        draw.line([*outline, outline[0]], fill=(255, 40, 40), width=3)
    return canvas


def write_copy_evidence(
    report: dict[str, Any], folder: Path, redact: bool = False
) -> list[dict[str, Any]]:
    """Write ``evidence/pair-NNN.json`` (and ``.png`` unless ``redact``) for each flagged pair.

    Returns:
        One entry per pair: ``synthetic``, ``train``, ``score``, ``edit`` and
        the written file names (relative to ``folder``); a pair whose files
        cannot be read again gets an ``error`` instead of an ``edit``.

    """
    options = dict(report["encoder"]["options"])
    pairs = [m for m in report.get("matches", []) if m.get("flagged") and m.get("train")]
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    out = folder / "evidence"
    for m in sorted(pairs, key=lambda m: -float(m.get("score") or 0.0)):
        if m["synthetic"] in seen or len(entries) >= MAX_PAIRS:
            continue
        seen.add(m["synthetic"])
        name = f"pair-{len(entries) + 1:03d}"
        entry: dict[str, Any] = {
            "synthetic": m["synthetic"],
            "train": m["train"],
            "score": m.get("score"),
        }
        try:
            match, picture = match_files(m["synthetic"], m["train"], options)
        except Exception as err:  # noqa: BLE001 - one unreadable pair must not lose the others
            entry["error"] = f"{type(err).__name__}: {err}"
            entries.append(entry)
            continue
        out.mkdir(parents=True, exist_ok=True)
        entry["edit"] = match.edit()
        entry["json"] = f"evidence/{name}.json"
        if not redact:
            picture.save(out / f"{name}.png", optimize=True)
            entry["png"] = f"evidence/{name}.png"
        (out / f"{name}.json").write_text(json.dumps(entry, indent=1))
        entries.append(entry)
    return entries


def evidence_html(entries: list[dict[str, Any]], folder: Path, redact: bool) -> str:
    """Return the report section: each pair's picture (embedded) and its estimated edit."""
    if not entries:
        return ""
    parts = [
        "<h2>Where the images match</h2>",
        '<p class="note">Left: the generated image; right: the training image. Green lines '
        "join verified keypoint matches; the red outline is the generated image's frame on "
        "the training image (the copied region).</p>",
    ]
    for e in entries:
        head = f"<p><b>{escape(str(e['synthetic']))}</b> copies <b>{escape(str(e['train']))}</b>"
        if "error" in e:
            parts.append(f"{head}: not drawn ({escape(e['error'])})</p>")
            continue
        ed = e["edit"]
        parts.append(
            f"{head}: {ed['inliers']} verified matches, scale {ed['scale']}, rotation "
            f"{ed['rotation_degrees']}&deg;, mirrored {'yes' if ed['mirrored'] else 'no'}, "
            f"crop box {escape(str(ed['crop_box_fraction']))}</p>"
        )
        if not redact and "png" in e:
            data = base64.b64encode((folder / e["png"]).read_bytes()).decode()
            parts.append(
                f'<img class="evidence" style="max-width:100%" alt="match of '
                f'{escape(str(e["synthetic"]))}" src="data:image/png;base64,{data}">'
            )
    return "".join(parts)


def export_evidence(folders: list[str], dest: str | Path) -> list[Path]:
    """Copy the evidence files (PNG + JSON) of copy-audit report folders into ``dest``.

    Files are named ``report{N}-pair-NNN.png``/``.json`` (``N``: the folder's
    place in ``folders``), so pairs of several reports do not collide. A
    folder without ``copy_evidence`` in its report.json adds nothing, and
    ``dest`` is made only when there is something to copy.

    Returns:
        The files written.

    """
    import shutil

    written: list[Path] = []
    for n, folder in enumerate(folders):
        try:
            report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # review checked the folders; a vanished report has no evidence to copy
        for entry in report.get("copy_evidence") or []:
            for key in ("png", "json"):
                src = Path(folder) / str(entry.get(key, ""))
                if key not in entry or not src.is_file():
                    continue
                target = Path(dest) / f"report{n}-{src.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                written.append(target)
    return written


def png_bytes(picture: Image.Image) -> bytes:
    """PNG bytes of a drawing (for a service that answers with the picture)."""
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()
