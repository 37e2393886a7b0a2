"""What an opened index can vouch for: damaged shards, health, and what it may show.

A shard that holds a NaN makes every similarity with its rows NaN, which an
exact search cannot rank: the training images in it could never be found.
Every row is checked for finite values when it is written (the manifest
records ``finite: true`` with the shard's checksums); a reader checks again
when it first searches (the search reads every row anyway), and
:meth:`~trainleak.gate.index.Index.verify` checks with the checksums.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainleak.errors import TrainleakError

if TYPE_CHECKING:
    from trainleak.gate.opened import OpenedIndex


def health(index: OpenedIndex) -> dict[str, Any]:
    """Say whether the index can give verdicts on uploaded images now.

    ``ok`` is false, with ``problems`` saying why, when: the threshold is not
    finite, the encoder cannot be rebuilt (an index built from vectors checks
    vectors only, so every upload would fail), the decisions files cannot be
    read, or a search found a damaged shard. Nothing here reads the vectors
    (the encoder is made on the first call and kept).

    Returns:
        ``{"ok": bool, "problems": [str, ...], "generation": int, "live": int}``.

    """
    problems = []
    if not math.isfinite(index.threshold):
        problems.append("the threshold is not a finite number")
    try:
        index.embedder()  # made once and kept: a service has it running already
    except TrainleakError as err:
        problems.append(f"uploaded images cannot be embedded: {err}")
    try:
        index.decisions.current()
    except (TrainleakError, OSError, ValueError) as err:
        problems.append(f"the reviewers' decisions cannot be read ({err})")
    if index.damage:
        problems.append(f"index damaged: {index.damage}")
    return {
        "ok": not problems,
        "problems": problems,
        "generation": int(index.manifest["generation"]),
        "live": len(index),
    }


def public_manifest(index: OpenedIndex) -> dict[str, Any]:
    """Return the manifest without what only the operator should see (paths on this machine).

    Left out: the holdout's root folder and file lists, and the embedding
    settings' cache folder; the threshold is the :class:`Calibration` record.
    """
    m = dict(index.manifest)
    if m.get("holdout"):
        m["holdout"] = {k: v for k, v in m["holdout"].items() if k not in ("root", "files")}
    settings = dict(m.get("settings") or {})
    if isinstance(settings.get("embed"), dict):
        settings["embed"] = {k: v for k, v in settings["embed"].items() if k != "cache"}
    m["settings"] = settings
    m["threshold"] = index.calibration.to_dict()
    return m
