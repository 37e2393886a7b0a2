"""The threshold a verdict is compared with, and how it was chosen: one record for audit and gate.

:class:`Calibration` is written into ``report.json`` (its ``threshold``
section) and into an index's ``manifest.json`` by the same :meth:`to_dict`, and
read back by :meth:`from_dict`, which refuses a record that cannot decide
anything (a non-finite value), so a damaged manifest never opens as a gate
that releases everything. :func:`choose_calibration` is the one threshold
rule: calibrated on a holdout at a target false-positive rate, else a fixed
value, else the encoder's operating point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trainleak.decide.people import INDEPENDENT_IMAGES, threshold_over_people
from trainleak.errors import AuditInputError
from trainleak.stats import threshold_at_fpr, wilson_interval

#: How a threshold was chosen.
Method = Literal["holdout", "fixed", "encoder-default"]
#: What the rates count: images, or people (when images carry identities).
CountedOver = Literal["images", "people"]

#: Keys :meth:`Calibration.to_dict` writes itself (others are kept in ``details``).
_FIELDS = (
    "value", "method", "target_fpr", "achieved_fpr", "resolvable_fpr", "interval",
    "counted_over", "calibrated", "note",
)  # fmt: skip


class CalibrationError(AuditInputError):
    """A threshold record that cannot decide anything (e.g. a non-finite value)."""


@dataclass(frozen=True)
class Calibration:
    """A decision threshold and its provenance: a score strictly above ``value`` is flagged.

    Attributes:
        value: the threshold.
        method: ``holdout`` (calibrated), ``fixed`` (the user's) or
            ``encoder-default`` (the encoder's operating point).
        target_fpr: the false-positive rate asked for (holdout only).
        achieved_fpr: the rate of null samples above ``value`` (holdout only).
        resolvable_fpr: the smallest rate the holdout can resolve, ``1 / n``.
        interval: 95% interval of the achieved rate, ``(low, high)``: Wilson over
            images, exact (Clopper-Pearson) over people.
        counted_over: ``images`` or ``people``: what the rates count.
        note: one sentence a reader of the report needs.
        details: further keys written beside these (holdout counts, the index's
            ``rows_at_calibration``), kept through a round trip.

    Example:
        >>> c = Calibration.at_fpr(np.arange(100) / 100, 0.05)
        >>> c.value, c.achieved_fpr, c.calibrated
        (0.94, 0.05, True)
        >>> Calibration.from_dict(c.to_dict()) == c
        True

    """

    value: float
    method: Method
    target_fpr: float | None = None
    achieved_fpr: float | None = None
    resolvable_fpr: float | None = None
    interval: tuple[float, float] | None = None
    counted_over: CountedOver = "images"
    note: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not math.isfinite(float(self.value)):
            raise CalibrationError(
                f"the threshold {self.value!r} is not a finite number, so no score can be "
                "compared with it: calibrate again (a holdout, --threshold, or the encoder default)"
            )

    @property
    def calibrated(self) -> bool:
        """Whether the threshold was calibrated on a holdout (its rates are measured)."""
        return self.method == "holdout"

    @classmethod
    def at_fpr(
        cls,
        null_scores: np.ndarray,
        fpr: float,
        counted_over: CountedOver = "images",
        details: Mapping[str, Any] | None = None,
    ) -> Calibration:
        """Calibrate on the scores of samples known not to leak (a holdout), at ``fpr``.

        Raises:
            CalibrationError: a null score is not finite (a damaged vector).

        """
        scores = _finite_null_scores(null_scores)
        t = threshold_at_fpr(scores, fpr)
        n = len(scores)
        passed = int(round((t.achieved_fpr or 0.0) * n))
        return cls(
            t.value,
            "holdout",
            fpr,
            t.achieved_fpr,
            t.resolvable_fpr,
            wilson_interval(passed, n),
            counted_over,
            t.note,
            dict(details or {}),
        )

    @classmethod
    def at_fpr_over_people(
        cls,
        null_scores: np.ndarray,
        groups: Sequence[str],
        fpr: float,
        details: Mapping[str, Any] | None = None,
    ) -> Calibration:
        """Calibrate so that at most ``fpr`` of the holdout *people* are flagged.

        A person is flagged when any of their photos is; the rate and its
        (Clopper-Pearson) interval count people: see :mod:`trainleak.decide.people`.

        Raises:
            CalibrationError: a null score is not finite (a damaged vector).

        """
        scores = _finite_null_scores(null_scores)
        t = threshold_over_people(scores, groups, fpr)
        extra = {**t.counts, **dict(details or {})}
        return cls(
            t.value, "holdout", fpr, t.achieved_fpr, t.resolvable_fpr, t.interval, "people",
            t.note, extra,
        )  # fmt: skip

    @classmethod
    def fixed(cls, value: float) -> Calibration:
        """Return a threshold the user gave (``--threshold``)."""
        note = "fixed by the user (--threshold); uncalibrated unless chosen from data"
        return cls(float(value), "fixed", note=note)

    @classmethod
    def encoder_default(cls, value: float, note: str) -> Calibration:
        """Return the encoder's own operating point.

        Raises:
            CalibrationError: the encoder has none (vectors given by the caller).

        """
        if not math.isfinite(value):
            raise CalibrationError(
                "vectors given by the caller have no operating point: pass a holdout or a threshold"
            )
        return cls(float(value), "encoder-default", note=note)

    def with_details(self, **details: Any) -> Calibration:
        """Return a copy with more ``details`` keys."""
        return Calibration(**{**self.__dict__, "details": {**self.details, **details}})

    def to_dict(self) -> dict[str, Any]:
        """Return the record as ``report.json`` and ``manifest.json`` write it."""
        out: dict[str, Any] = {
            "value": float(self.value),
            "method": self.method,
            "target_fpr": self.target_fpr,
            "achieved_fpr": self.achieved_fpr,
            "resolvable_fpr": self.resolvable_fpr,
            "interval": list(self.interval) if self.interval is not None else None,
            "counted_over": self.counted_over,
            "calibrated": self.calibrated,
            "note": self.note,
        }
        out.update({k: v for k, v in self.details.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Calibration:
        """Read a record :meth:`to_dict` wrote (older records without ``interval`` too).

        Raises:
            CalibrationError: the record has no finite numeric ``value`` or an
                unknown method.

        """
        if not isinstance(record, Mapping):
            raise CalibrationError(f"a threshold record must be a JSON object, got {record!r}")
        value = record.get("value")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CalibrationError(
                f"the threshold value {value!r} is not a number: calibrate again"
            )
        method = record.get("method")
        if method not in ("holdout", "fixed", "encoder-default"):
            raise CalibrationError(f"unknown threshold method {method!r}: calibrate again")
        interval = record.get("interval")
        return cls(
            float(value),
            method,
            _number(record.get("target_fpr")),
            _number(record.get("achieved_fpr")),
            _number(record.get("resolvable_fpr")),
            (float(interval[0]), float(interval[1])) if interval else None,
            "people" if record.get("counted_over") == "people" else "images",
            str(record.get("note") or ""),
            {k: v for k, v in record.items() if k not in _FIELDS},
        )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def choose_calibration(
    holdout_scores: np.ndarray | None,
    fpr: float,
    fixed: float | None,
    default: float,
    default_note: str,
    counted_over: CountedOver = "images",
    groups: Sequence[str | None] | None = None,
) -> Calibration:
    """Choose as ``audit`` and ``index build`` do: holdout, then fixed, then encoder default.

    With ``groups`` (a person label for every holdout image) the holdout
    calibration counts people (:meth:`Calibration.at_fpr_over_people`);
    without, it counts images and its note says the interval assumes
    independent images.

    Args:
        holdout_scores: the holdout's leak scores, or ``None`` without a holdout.
        fpr: target false-positive rate of the holdout calibration.
        fixed: the user's threshold, or ``None``.
        default: the encoder's operating point (``nan`` when it has none).
        default_note: what the encoder says about its operating point.
        counted_over: what the holdout's rates count.
        groups: the holdout's person labels; any missing label means images are counted.

    Example:
        >>> choose_calibration(None, 0.01, 0.9, 0.5, "").method
        'fixed'

    """
    if holdout_scores is not None:
        if groups is not None and len(groups) and all(g for g in groups):
            return Calibration.at_fpr_over_people(holdout_scores, [str(g) for g in groups], fpr)
        c = Calibration.at_fpr(holdout_scores, fpr, counted_over)
        if counted_over == "images":
            c = Calibration(**{**c.__dict__, "note": c.note + INDEPENDENT_IMAGES})
        return c
    if fixed is not None:
        return Calibration.fixed(fixed)
    return Calibration.encoder_default(default, default_note)


class ThresholdChangeError(CalibrationError):
    """A change to an index would move its calibrated threshold further than allowed."""


def check_change(old: Calibration, new: Calibration, max_change: float, what: str) -> None:
    """Refuse a recalibration that moves the threshold by more than ``max_change`` (absolute).

    Args:
        old: the threshold before the change.
        new: the threshold the change would commit.
        max_change: the largest absolute move allowed.
        what: the change, for the message (e.g. ``adding 70 rows``).

    Raises:
        ThresholdChangeError: saying old and new, why it moved, and how to accept it.

    Example:
        >>> a, b = Calibration.fixed(0.71), Calibration.fixed(0.999)
        >>> check_change(a, a, 0.01, "adding 1 row")
        >>> check_change(a, b, 0.01, "adding 1 row")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        trainleak.decide.calibration.ThresholdChangeError: adding 1 row would move the threshold from 0.7100 to 0.9990 (+0.2890; more than the 0.0100 allowed): ...

    """  # noqa: E501
    delta = new.value - old.value
    if abs(delta) <= max_change:
        return
    if delta > 0:
        why = (
            "the holdout's images now resemble the training set more (new training images "
            "look like them), so the calibrated threshold rises and images scoring between "
            f"{old.value:.4f} and {new.value:.4f}, blocked until now, would be released"
        )
    else:
        why = (
            "the holdout's images resemble the training set less than before, so the calibrated "
            f"threshold falls and images scoring between {new.value:.4f} and {old.value:.4f}, "
            "released until now, would be blocked"
        )
    raise ThresholdChangeError(
        f"{what} would move the threshold from {old.value:.4f} to {new.value:.4f} "
        f"({delta:+.4f}; more than the {max_change:.4f} allowed): {why}. Nothing was "
        "committed: check what is being added (e.g. other views of the holdout's own subjects), "
        "or commit it anyway with --accept-threshold-change (API: accept_threshold_change=True), "
        "or allow more with --max-threshold-change"
    )


def _finite_null_scores(null_scores: np.ndarray) -> np.ndarray:
    """Return the holdout scores as float64; a non-finite one is a damaged vector (fail closed).

    Raises:
        CalibrationError: a score is NaN or infinite.

    """
    scores = np.asarray(null_scores, np.float64)
    if not np.isfinite(scores).all():
        raise CalibrationError(
            f"{int((~np.isfinite(scores)).sum())} holdout score(s) are not finite numbers: "
            "a training or holdout vector is damaged; rebuild from the images"
        )
    return scores
