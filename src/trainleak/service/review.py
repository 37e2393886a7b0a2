"""``trainleak review``: a local page where a person confirms or dismisses each candidate.

A thin FastAPI layer over :mod:`~trainleak.service.review_items` (the
candidates of any report folder) and :mod:`~trainleak.decide.decisions` (the
append-only log beside each report). The page itself is plain HTML, CSS and
JavaScript served by the package (``service/static``): no CDN, every action
on a key.

Routes: ``GET /`` the page; ``GET /api/candidates``; ``GET /api/state`` (the
current decision of every candidate, polled so two reviewers see each
other's work); ``POST /api/decide`` and ``POST /api/undo``; ``GET /image/N``
(only images the reports list, re-encoded as PNG); ``GET /report/N`` (the
report's own ``report.html`` with a "review" link on each candidate).

The application and its server are made by :func:`.review_routes.create_app` and
:func:`.review_routes.run` (the routes sit above this module). Guards, declared once
in :class:`~.review_auth.Guard`: every request carries
a reviewer's token (on every address), whose reviewer signs its decisions;
on a loopback address, requests must name a loopback host (no DNS
rebinding); a ``POST`` must be JSON from the same origin (no cross-site form
can decide); request bodies are counted while they stream and capped.
"""

from __future__ import annotations

import os
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainleak.config import ReviewConfig
from trainleak.decide.decisions import DB_NAME, VERDICTS, Decision, DecisionsError, DecisionStore
from trainleak.service.review_evidence import attach_copy_evidence
from trainleak.service.review_images import ImageTable, render_png
from trainleak.service.review_items import Candidate, ReviewReport, read_report

STATIC = Path(__file__).parent / "static"
#: The files under ``/static/``: a fixed list, so no request reaches another file.
STATIC_FILES = {
    "review.js": "text/javascript",
    "review.css": "text/css",
    "report-links.js": "text/javascript",
}


class Review:
    """The state behind the page: the reports, their candidates and decision logs.

    Args:
        folders: report folders (each holds a ``report.json``).
        config: settings (defaults from :class:`~trainleak.config.ReviewConfig`).
        base: folder relative image paths are resolved against first
            (default: the current folder, where the audit usually ran).

    Raises:
        ReviewInputError: a folder holds no report with candidates.

    """

    def __init__(
        self,
        folders: list[str | os.PathLike[str]],
        config: ReviewConfig | None = None,
        base: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config or ReviewConfig()
        self.reviewer = self.config.reviewer or _login_name()
        self.images = ImageTable([Path(base or Path.cwd())], self.config.max_file_mb)
        self.reports: list[ReviewReport] = [
            read_report(f, i, self.images) for i, f in enumerate(folders)
        ]
        for r in self.reports:
            if r.kind == "audit" and r.report.get("copy_evidence"):
                attach_copy_evidence(r.candidates, r.report["copy_evidence"], r.folder, self.images)
        self.stores = [open_store(r.folder / DB_NAME) for r in self.reports]
        ordered = [c for r in self.reports for c in r.candidates]
        ordered.sort(key=lambda c: -c.order)
        self.candidates: list[Candidate] = ordered
        self.by_id = {c.id: c for c in ordered}
        self.keys = {c.id: self.key(c) for c in ordered}
        # Evidence pictures hold two images side by side: sent twice as wide.
        self.wide = {c.evidence.image for c in ordered if c.evidence is not None}
        self._png = lru_cache(maxsize=512)(self._render)

    def key(self, c: Candidate) -> tuple[str, str, str]:
        """Return ``(synthetic_hash, train_hash, encoder)``: what a decision on ``c`` is about."""
        s, t = c.pair_images
        return (
            self.images.digest(s) if s is not None else f"sample:{c.synthetic}",
            self.images.digest(t) if t is not None else c.train,
            self.reports[c.report].encoder_key,
        )

    def state(self) -> dict[str, dict[str, Any] | None]:
        """Return the current decision of every candidate (``None`` = undecided)."""
        current = [store.current() for store in self.stores]
        out: dict[str, dict[str, Any] | None] = {}
        for c in self.candidates:
            d = current[c.report].decision_for(*self.keys[c.id])
            out[c.id] = None if d is None else {**d.summary(), "row": d.row}
        return out

    def decide(self, cid: str, decision: str, reviewer: str, note: str = "") -> Decision:
        """Append ``decision`` on candidate ``cid`` to its report's log.

        Raises:
            KeyError: no such candidate.
            ValueError: not one of ``leak``, ``not a leak``, ``unsure``.

        """
        c = self.by_id[cid]
        if not reviewer:
            raise ValueError("a decision needs its reviewer's name")
        if decision not in VERDICTS or decision == "undecided":
            raise ValueError(f"decision must be one of {VERDICTS[:3]}, not {decision!r}")
        row = Decision(
            *self.keys[cid], decision=decision, reviewer=reviewer,
            decided_at="", note=note, synthetic=c.synthetic, train=c.train, kind=c.kind,
        )  # fmt: skip
        return self.stores[c.report].add(row)

    def undo(self, cid: str, row: int, reviewer: str) -> Decision:
        """Undo log row ``row`` of candidate ``cid``'s report (a new row puts back the one before).

        Raises:
            KeyError: no such candidate, or the row is not about it.

        """
        c = self.by_id[cid]
        store = self.stores[c.report]
        target = next((d for d in store.history() if d.row == row), None)
        if target is None or target.key != self.keys[cid]:
            raise KeyError(f"row {row} is not a decision on candidate {cid}")
        if not reviewer:
            raise ValueError("an undo needs its reviewer's name")
        return store.undo(row, reviewer)

    def png(self, n: int) -> bytes | None:
        """Return image ``n`` as PNG, or ``None`` when it is missing or not an image."""
        if not 0 <= n < len(self.images.paths):
            return None
        return self._png(n)

    def _render(self, n: int) -> bytes | None:
        data = self.images.read(n)
        if data is None:
            return None
        side = self.config.image_size * (2 if n in self.wide else 1)
        return render_png(data, side, self.config.max_pixels)

    def payload(self, reviewer: str) -> dict[str, Any]:
        """Return what ``GET /api/candidates`` answers to ``reviewer``."""
        return {
            "reviewer": reviewer,
            "reports": [r.summary() for r in self.reports],
            "candidates": [
                {**c.to_dict(), "redacted": self.reports[c.report].redacted, "order": c.order}
                for c in self.candidates
            ],
            "decisions": self.state(),
        }


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "reviewer"


def open_store(path: Path) -> DecisionStore:
    """Open (or start) a report's decisions log.

    Raises:
        DecisionsError: the file is not an SQLite decisions log (damaged, or
            another file under that name), saying what to do.

    """
    try:
        return DecisionStore(path)
    except sqlite3.DatabaseError as err:
        raise DecisionsError(
            f"{path} is not a trainleak decisions log ({err}): move it aside (review then "
            "starts a new one) or restore it from a copy"
        ) from None
