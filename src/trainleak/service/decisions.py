"""Moved to :mod:`trainleak.decide.decisions` (the decision core); kept so old imports work."""

from trainleak.decide.decisions import (
    DB_NAME,
    EXPORT_COLUMNS,
    VERDICTS,
    Decision,
    Decisions,
    DecisionsError,
    DecisionStore,
    Verdict,
    export_csv,
    load_decisions,
    now,
)

__all__ = [
    "VERDICTS",
    "Verdict",
    "DB_NAME",
    "EXPORT_COLUMNS",
    "DecisionsError",
    "Decision",
    "now",
    "Decisions",
    "DecisionStore",
    "load_decisions",
    "export_csv",
]
