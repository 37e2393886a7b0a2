"""People's decisions at the release gate: ``check`` and ``serve`` honour what reviewers decided.

``trainleak review`` records a decision per pair of images, keyed by the two
files' content hashes and the encoder (:mod:`trainleak.decide.decisions`).
The gate finds decisions in two places, merged (the newest decision of a pair
wins, by its time):

* the index's own log, ``IDX/decisions.sqlite``, filled by
  ``trainleak index add-decisions IDX FILE...`` (so ``serve`` honours them
  without a flag, and picks up new ones while it runs);
* ``--decisions FILE`` (:attr:`trainleak.config.CheckConfig.decisions`): a
  ``decisions.sqlite``, the report folder holding one, or a
  ``review --export`` CSV.

Only decisions made with the index's encoder apply. For an input whose
content hash a reviewer has seen, the rule is the one ``audit --decisions``
applies (:func:`trainleak.decide.reviewed.apply_decisions`, one function for
both), so both answer alike:

* a pair marked ``leak`` blocks the input even below the threshold (the
  newest such pair is the one named);
* an input above the threshold is released when its nearest training image
  is the one a reviewer marked ``not a leak`` with it; a ``not a leak``
  decision about another training image changes nothing;
* ``unsure`` changes nothing.

A verdict a decision changed says so in ``reviewed`` (``not a leak by ana at
2026-...``) and in its reason. Inputs given as bare vectors have no content
hash, so no decision can apply to them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainleak.decide.decisions import (
    DB_NAME,
    Decisions,
    DecisionStore,
    load_decisions,
)
from trainleak.decide.decisions import Decision as Decision
from trainleak.decide.reviewed import describe as describe

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
#: Seconds between looks at the decisions files for changes (``serve`` runs for days).
RECHECK_S = 1.0


@dataclass
class GateDecisions:
    """The decisions that apply to one index, looked up by the input's content hash.

    Attributes:
        encoder_key: the index's ``EncoderInfo.cache_key()`` (decisions made
            with other encoders are left out).
        sources: where the decisions came from (files), for messages and ``index info``.
        by_synthetic: ``synthetic hash -> {training hash -> decision}`` (current
            decisions only; ``undecided`` pairs left out).
        other_encoders: decisions found that were made with another encoder.

    """

    encoder_key: str
    sources: list[str] = field(default_factory=list)
    by_synthetic: dict[str, dict[str, Decision]] = field(default_factory=dict)
    other_encoders: int = 0

    @classmethod
    def merge(cls, encoder_key: str, found: list[Decisions]) -> GateDecisions:
        """Merge logs: per pair the newest decision (by time) wins, across files.

        Example:
            >>> old = Decision("s", "t", "k", "leak", "ana", "2026-01-01T00:00:00.000Z")
            >>> new = Decision("s", "t", "k", "not a leak", "bo", "2026-01-02T00:00:00.000Z")
            >>> gd = GateDecisions.merge("k", [Decisions([new]), Decisions([old])])
            >>> gd.lookup("s")["t"].reviewer, len(gd)
            ('bo', 1)

        """
        newest: dict[tuple[str, str, str], Decision] = {}
        for decisions in found:
            for d in decisions.current_rows():
                have = newest.get(d.key)
                if have is None or d.decided_at >= have.decided_at:
                    newest[d.key] = d
        out = cls(encoder_key, [decisions.source for decisions in found])
        for d in newest.values():
            if d.encoder != encoder_key:
                out.other_encoders += 1
            elif d.decision != "undecided":
                out.by_synthetic.setdefault(d.synthetic_hash, {})[d.train_hash] = d
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_synthetic.values())

    def lookup(self, synthetic_hash: str | None) -> dict[str, Decision]:
        """Return ``{training hash -> decision}`` for an input (empty when nobody decided)."""
        if not synthetic_hash:
            return {}
        return self.by_synthetic.get(synthetic_hash, {})

    def summary(self) -> dict[str, Any]:
        """Return what ``index info`` and service metadata show."""
        counts: dict[str, int] = {}
        for pairs in self.by_synthetic.values():
            for d in pairs.values():
                counts[d.decision] = counts.get(d.decision, 0) + 1
        return {
            "sources": self.sources,
            "pairs": len(self),
            "by_decision": dict(sorted(counts.items())),
            "other_encoders": self.other_encoders,
        }


class IndexDecisions:
    """An index's decisions, re-read when its log or the ``--decisions`` file changes.

    ``serve`` runs for days while reviewers keep deciding: a ``stat`` of the
    files (at most once a second) notices ``index add-decisions`` (or a reviewer
    writing to the ``--decisions`` log) and the next verdict honours it.

    Args:
        folder: the index folder (its ``decisions.sqlite``, when there is one).
        encoder_key: the index's encoder key.
        extra: ``CheckConfig.decisions``, or ``None``.

    """

    def __init__(self, folder: PathLike, encoder_key: str, extra: PathLike | None) -> None:
        self.own = Path(folder) / DB_NAME
        self.extra = Path(extra) if extra else None
        self.encoder_key = encoder_key
        self._stamp: tuple[Any, ...] | None = None
        self._checked = 0.0
        self._current = GateDecisions(encoder_key)
        if self.extra is not None:
            self.current()  # a wrong --decisions file fails now, not mid-run

    def _files(self) -> list[Path]:
        found = [self.own] if self.own.is_file() else []
        if self.extra is not None:
            found.append(self.extra / DB_NAME if self.extra.is_dir() else self.extra)
        return found

    def _stamp_now(self, found: list[Path]) -> tuple[Any, ...]:
        stamp: list[Any] = []
        for path in found:
            for part in (path, Path(f"{path}-wal")):  # WAL: writes land in -wal first
                try:
                    st = part.stat()
                    stamp.append((str(part), st.st_mtime_ns, st.st_size))
                except OSError:
                    stamp.append((str(part), None))
        return tuple(stamp)

    def current(self) -> GateDecisions:
        """Return the decisions as they are now (re-read only when a file changed).

        The files are looked at no more than once per :data:`RECHECK_S`
        seconds: a verdict per input must not cost a ``stat`` per input.
        """
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < RECHECK_S:
            return self._current
        self._checked = now
        found = self._files()
        stamp = self._stamp_now(found)
        if stamp != self._stamp:
            try:
                self._current = GateDecisions.merge(
                    self.encoder_key, [load_decisions(p) for p in found]
                )
            except Exception:
                self._stamp = None  # no stale decisions until the files read again: fail closed
                raise
            self._stamp = stamp
            if self._current.other_encoders and not len(self._current):
                log.warning(
                    "none of the %d decisions found apply: they were made with another encoder "
                    "than the index's (%s)",
                    self._current.other_encoders,
                    self.encoder_key,
                )
        return self._current


def add_decisions(folder: PathLike, sources: list[PathLike], encoder_key: str) -> dict[str, Any]:
    """Copy decisions into an index's own log (``trainleak index add-decisions``).

    Every current decision of each source is appended to
    ``IDX/decisions.sqlite`` unless the log already holds the same decision
    (pair, verdict, reviewer and time), so adding a file twice adds nothing.
    The log is append-only, as the review log is: a newer decision of a pair
    supersedes an older one, nothing is overwritten.

    Args:
        folder: the index folder.
        sources: decisions files (``decisions.sqlite``, report folders, or
            ``review --export`` CSVs).
        encoder_key: the index's encoder key (decisions for others are counted, and kept out).

    Returns:
        Counts: ``added``, ``present`` (already in the log), ``other_encoder``
        (made with another encoder: not added), and the index log's ``pairs``
        after the change.

    """
    store = DecisionStore(Path(folder) / DB_NAME)
    have = {(d.key, d.decision, d.reviewer, d.decided_at) for d in store.history()}
    added = present = other = 0
    for source in sources:
        for d in sorted(load_decisions(source).current_rows(), key=lambda d: d.decided_at):
            if d.encoder != encoder_key:
                other += 1
                continue
            sig = (d.key, d.decision, d.reviewer, d.decided_at)
            if sig in have:
                present += 1
                continue
            store.add(replace(d, row=0, undoes=None))  # row ids of another log mean nothing here
            have.add(sig)
            added += 1
    pairs = len(GateDecisions.merge(encoder_key, [store.current()]))
    return {"added": added, "present": present, "other_encoder": other, "pairs": pairs}
