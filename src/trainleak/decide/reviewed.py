"""The reviewers' rule: what a person decided about a pair overrides the threshold.

``audit --decisions`` and the release gate (``check``, ``serve``) apply this
one rule to every input a reviewer has seen:

* a pair marked ``leak`` flags the input even below the threshold; the newest
  such pair is the one the verdict names;
* an input the threshold flags is released when the training item it points
  at is the one a reviewer marked ``not a leak`` with it; a ``not a leak``
  decision about another training item changes nothing;
* ``unsure`` changes nothing.

A training item is keyed however the caller knows it: a row of the training
set in ``audit``, a content hash at the gate.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from trainleak.decide.decisions import Decision

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Ruling(Generic[K]):
    """What the decisions make of one input.

    Attributes:
        flagged: flagged (``audit``) or blocked (gate) after the decisions.
        target: the training item the verdict points at (a ``leak`` pair's
            item when one decided it, else the threshold's).
        decision: the decision that set the verdict; ``None`` when the
            threshold alone decided.

    """

    flagged: bool
    target: K | None
    decision: Decision | None = None


def apply_decisions(flagged: bool, target: K | None, decided: Mapping[K, Decision]) -> Ruling[K]:
    """Apply the reviewers' rule to one input.

    Args:
        flagged: what the threshold (and the fail-closed rule) says.
        target: the training item the score points at (``None`` when the
            search found none: then no ``not a leak`` decision can release it).
        decided: the input's current decisions, by training item.

    Example:
        >>> from trainleak.decide.decisions import Decision
        >>> ok = Decision("s", "t1", "k", "not a leak", "ana", "2026-01-01T00:00:00.000Z")
        >>> apply_decisions(True, "t1", {"t1": ok}).flagged
        False
        >>> apply_decisions(True, "t2", {"t1": ok}).flagged
        True

    """
    leaks = [(k, d) for k, d in decided.items() if d.decision == "leak"]
    if leaks:
        # Newest first; equal times go to the larger key, so the answer never
        # depends on the order the decisions were read in.
        newest = max(leaks, key=lambda kd: (kd[1].decided_at, kd[0]))[0]  # type: ignore[type-var]
        return Ruling(True, newest, decided[newest])
    cleared = decided.get(target) if flagged and target is not None else None
    if cleared is not None and cleared.decision == "not a leak":
        return Ruling(False, target, cleared)
    return Ruling(flagged, target, None)


def describe(d: Decision) -> str:
    """Return how a verdict cites a decision: ``not a leak by ana at 2026-01-01T00:00:00.000Z``.

    Example:
        >>> describe(Decision("s", "t", "k", "leak", "ana", "2026-01-01T00:00:00.000Z", "same"))
        'leak by ana at 2026-01-01T00:00:00.000Z (same)'

    """
    who = d.reviewer or "an unnamed reviewer"
    note = f" ({d.note})" if d.note and not d.note.startswith("undo of row") else ""
    return f"{d.decision} by {who} at {d.decided_at or 'an unknown time'}{note}"
