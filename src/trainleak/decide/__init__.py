"""The decision core under both ``audit`` and the release gate.

One threshold record and rule (:mod:`~trainleak.decide.calibration`), one
scores type (:mod:`~trainleak.decide.scores`), one holdout contamination check
(:mod:`~trainleak.decide.contamination`), the reviewers' decisions log and
rule (:mod:`~trainleak.decide.decisions`, :mod:`~trainleak.decide.reviewed`),
and the fail-closed rule (:mod:`~trainleak.decide.failclosed`). ``audit`` and
``check`` both decide through these, so they answer alike.
"""

from trainleak.decide.calibration import Calibration, CalibrationError, choose_calibration
from trainleak.decide.contamination import (
    MAX_CONTAMINATION,
    contaminated_rows,
    drop_training_copies,
)
from trainleak.decide.decisions import Decision, Decisions, DecisionStore, load_decisions
from trainleak.decide.failclosed import DAMAGED, damaged_reason, flags, undecidable
from trainleak.decide.reviewed import Ruling, apply_decisions, describe
from trainleak.decide.scores import Neighbours, Scores

__all__ = [
    "DAMAGED",
    "MAX_CONTAMINATION",
    "Calibration",
    "CalibrationError",
    "Decision",
    "DecisionStore",
    "Decisions",
    "Neighbours",
    "Ruling",
    "Scores",
    "apply_decisions",
    "choose_calibration",
    "contaminated_rows",
    "damaged_reason",
    "describe",
    "drop_training_copies",
    "flags",
    "load_decisions",
    "undecidable",
]
