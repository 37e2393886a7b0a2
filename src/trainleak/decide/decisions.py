"""What reviewers decided about candidate pairs: an append-only SQLite log beside a report.

``trainleak review`` writes one row per key press into ``decisions.sqlite`` in
the report folder (WAL mode, so a reader never blocks a writer and two
reviewers at once lose nothing). A row names a pair by the content hashes of
its two images (:func:`trainleak.store.content_hash`, the key the embedding
cache and the index use) and by the encoder (``EncoderInfo.cache_key()``), so
a decision still applies when the files move or the audit runs again. Rows are
never updated or deleted (triggers refuse it): an undo is a new row that puts
back the decision before the undone one. The current decision of a pair is its
newest row.

:func:`load_decisions` reads that log, or the CSV that ``review --export``
writes, into :class:`Decisions`, whose :meth:`Decisions.decision_for` the
audits and the release gate ask.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from trainleak.errors import TrainleakError

#: A reviewer's verdict on a pair; ``undecided`` is what an undo back to nothing writes.
Verdict = Literal["leak", "not a leak", "unsure", "undecided"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
#: The file ``trainleak review`` keeps beside each report.
DB_NAME = "decisions.sqlite"
#: Columns of ``review --export`` (the first five are the documented contract).
EXPORT_COLUMNS = [
    "synthetic",
    "train",
    "decision",
    "reviewer",
    "decided_at",
    "note",
    "synthetic_hash",
    "train_hash",
    "encoder",
    "kind",
]
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    synthetic_hash TEXT NOT NULL,
    train_hash TEXT NOT NULL,
    encoder TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('leak', 'not a leak', 'unsure', 'undecided')),
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    synthetic TEXT NOT NULL DEFAULT '',
    train TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    undoes INTEGER REFERENCES decisions(id)
);
CREATE INDEX IF NOT EXISTS decisions_pair ON decisions (synthetic_hash, train_hash, encoder, id);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: add a row instead'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: add a row instead'); END;
"""


class DecisionsError(TrainleakError):
    """A decisions file that cannot be read, or a decision that cannot be recorded."""


@dataclass(frozen=True)
class Decision:
    """One row of the log: who decided what about a pair, and when.

    Attributes:
        synthetic_hash: content hash of the synthetic (generated) image.
        train_hash: content hash of the training image (``identity:NAME`` for
            a membership identity, which has no single image).
        encoder: ``EncoderInfo.cache_key()`` of the encoder that paired them.
        decision: ``leak``, ``not a leak``, ``unsure`` or ``undecided``.
        reviewer: who decided.
        decided_at: UTC time, ISO 8601 with milliseconds and ``Z``.
        note: the reviewer's note (may be empty).
        synthetic: the synthetic image's path as the report lists it.
        train: the training image's path as the report lists it.
        kind: the report it came from (``audit``, ``extract``, ``dedup``, ``membership``).
        row: the row id in the log (0 for a decision read from CSV).
        undoes: the row this one undoes, if it is an undo.

    """

    synthetic_hash: str
    train_hash: str
    encoder: str
    decision: str
    reviewer: str
    decided_at: str
    note: str = ""
    synthetic: str = ""
    train: str = ""
    kind: str = ""
    row: int = 0
    undoes: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """``(synthetic_hash, train_hash, encoder)``: what a decision is about."""
        return (self.synthetic_hash, self.train_hash, self.encoder)

    def summary(self) -> dict[str, Any]:
        """Return what a report shows of it: decision, reviewer, time, note."""
        return {
            "decision": self.decision,
            "reviewer": self.reviewer,
            "decided_at": self.decided_at,
            "note": self.note,
        }


def now() -> str:
    """Return the current UTC time as the log writes it.

    Example:
        >>> now().endswith("Z") and len(now()) == 24
        True

    """
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Decisions:
    """The current decision of each pair, as read by :func:`load_decisions`.

    Example:
        >>> d = Decisions([Decision("a", "b", "pixel-v2-x", "leak", "ana", "2024-01-01T00:00:00Z")])
        >>> d.decision_for("a", "b", "pixel-v2-x").reviewer, d.decision_for("b", "a", "pixel-v2-x")
        ('ana', None)

    """

    def __init__(self, rows: list[Decision], source: str = "") -> None:
        self.source = source
        self._current: dict[tuple[str, str, str], Decision] = {}
        for row in rows:  # oldest first: the newest row of a pair wins
            self._current[row.key] = row

    def decision_for(
        self, synthetic_hash: str, train_hash: str, encoder_key: str
    ) -> Decision | None:
        """Return the pair's current decision, or ``None`` when nobody decided it.

        ``unsure`` is returned (a person looked); ``undecided`` (everything
        undone) is ``None``.
        """
        found = self._current.get((synthetic_hash, train_hash, encoder_key))
        return None if found is None or found.decision == "undecided" else found

    def current_rows(self) -> list[Decision]:
        """Return the newest row of every pair, ``undecided`` ones included (to merge logs)."""
        return list(self._current.values())

    def __iter__(self) -> Iterator[Decision]:
        """Iterate over the current decisions (``undecided`` pairs left out)."""
        return (d for d in self._current.values() if d.decision != "undecided")

    def __len__(self) -> int:
        return sum(1 for _ in self)


class DecisionStore:
    """The append-only log in one report folder; each call opens its own connection.

    Args:
        path: the ``decisions.sqlite`` file (created with its schema when missing).

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout=10000")
        return con

    def add(self, decision: Decision) -> Decision:
        """Append a decision; return it with its row id (``decided_at`` filled when empty)."""
        if decision.decision not in VERDICTS:
            raise DecisionsError(f"unknown decision {decision.decision!r}; one of {VERDICTS}")
        when = decision.decided_at or now()
        con = self._connect()
        try:
            cur = con.execute(
                "INSERT INTO decisions (synthetic_hash, train_hash, encoder, decision, reviewer, "
                "decided_at, note, synthetic, train, kind, undoes) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*decision.key, decision.decision, decision.reviewer, when, decision.note,
                 decision.synthetic, decision.train, decision.kind, decision.undoes),
            )  # fmt: skip
            row = int(cur.lastrowid or 0)
        finally:
            con.close()
        return replace(decision, decided_at=when, row=row)

    def undo(self, row: int, reviewer: str) -> Decision:
        """Undo row ``row``: append a row that puts back the pair's decision before it.

        Args:
            row: the row to undo (a decision, or an undo to redo what it undid).
            reviewer: who undoes it.

        Returns:
            The new row: its decision is the pair's newest decision older than
            ``row`` (``undecided`` when there was none).

        Raises:
            DecisionsError: no such row.

        """
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")  # read-then-append as one step against other writers
            target = con.execute("SELECT * FROM decisions WHERE id = ?", (row,)).fetchone()
            if target is None:
                con.execute("ROLLBACK")
                raise DecisionsError(f"no decision row {row} in {self.path}")
            before = con.execute(
                "SELECT decision FROM decisions WHERE synthetic_hash = ? AND train_hash = ? "
                "AND encoder = ? AND id < ? ORDER BY id DESC LIMIT 1",
                (target["synthetic_hash"], target["train_hash"], target["encoder"], row),
            ).fetchone()
            undone = _from_row(target)
            new = replace(
                undone,
                decision=before["decision"] if before else "undecided",
                reviewer=reviewer,
                decided_at=now(),
                note=f"undo of row {row}",
                undoes=row,
            )
            cur = con.execute(
                "INSERT INTO decisions (synthetic_hash, train_hash, encoder, decision, reviewer, "
                "decided_at, note, synthetic, train, kind, undoes) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*new.key, new.decision, new.reviewer, new.decided_at, new.note,
                 new.synthetic, new.train, new.kind, row),
            )  # fmt: skip
            con.execute("COMMIT")
            return replace(new, row=int(cur.lastrowid or 0))
        finally:
            con.close()

    def history(self) -> list[Decision]:
        """Return every row, oldest first."""
        con = self._connect()
        try:
            return [_from_row(r) for r in con.execute("SELECT * FROM decisions ORDER BY id")]
        finally:
            con.close()

    def current(self) -> Decisions:
        """Return the current decision of each pair."""
        return Decisions(self.history(), str(self.path))


def _from_row(r: sqlite3.Row) -> Decision:
    return Decision(
        synthetic_hash=r["synthetic_hash"],
        train_hash=r["train_hash"],
        encoder=r["encoder"],
        decision=r["decision"],
        reviewer=r["reviewer"],
        decided_at=r["decided_at"],
        note=r["note"],
        synthetic=r["synthetic"],
        train=r["train"],
        kind=r["kind"],
        row=int(r["id"]),
        undoes=r["undoes"],
    )


def load_decisions(path: str | os.PathLike[str]) -> Decisions:
    """Read decisions from a ``decisions.sqlite``, a report folder holding one, or an export.

    Args:
        path: the SQLite log ``trainleak review`` keeps, the report folder it
            sits in, or the CSV ``trainleak review --export`` wrote (it needs
            the ``synthetic_hash``, ``train_hash``, ``encoder`` and
            ``decision`` columns).

    Returns:
        The current decision per pair; ask it with :meth:`Decisions.decision_for`.

    Raises:
        DecisionsError: the file is missing or neither a decisions log nor an export.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> store = DecisionStore(os.path.join(folder, DB_NAME))
        >>> _ = store.add(Decision("s", "t", "pixel-v2-x", "not a leak", "ana", ""))
        >>> load_decisions(folder).decision_for("s", "t", "pixel-v2-x").decision
        'not a leak'

    """
    p = Path(path)
    if p.is_dir():
        p = p / DB_NAME
    if not p.is_file():
        raise DecisionsError(
            f"no decisions file at {path}: give the decisions.sqlite that trainleak review "
            "keeps beside a report, its report folder, or a CSV from trainleak review --export"
        )
    with open(p, "rb") as fh:
        magic = fh.read(len(_SQLITE_MAGIC))
    if magic == _SQLITE_MAGIC:
        try:
            return DecisionStore(p).current()
        except sqlite3.DatabaseError as err:
            raise DecisionsError(f"{p} is not a trainleak decisions log: {err}") from None
    return Decisions(_read_csv(p), str(p))


#: What :func:`trainleak.report.csv_cell` quotes (besides any white space) and so
#: what a quote is removed before on reading (kept here: decide sits below report).
_QUOTED = "=+-@\t\r\n\uff1d\uff0b\uff0d\uff20'"


def _uncell(value: str) -> str:
    """Undo :func:`trainleak.report.csv_cell`'s quote (before a formula character, a space or ')."""
    if len(value) > 1 and value[0] == "'" and (value[1] in _QUOTED or value[1].isspace()):
        return value[1:]
    return value


def _read_csv(path: Path) -> list[Decision]:
    needed = {"synthetic_hash", "train_hash", "encoder", "decision"}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise DecisionsError(
                f"{path} is neither a decisions.sqlite nor a trainleak review export: "
                f"it lacks the column(s) {sorted(missing)}"
            )
        rows = []
        for line in reader:
            cells = {k: _uncell(v or "") for k, v in line.items() if k}
            if cells["decision"] not in VERDICTS:
                raise DecisionsError(
                    f"{path}: unknown decision {cells['decision']!r} (one of {VERDICTS})"
                )
            g = cells.get
            rows.append(
                Decision(
                    g("synthetic_hash", ""), g("train_hash", ""), g("encoder", ""),
                    g("decision", ""), g("reviewer", ""), g("decided_at", ""), g("note", ""),
                    g("synthetic", ""), g("train", ""), g("kind", ""),
                )
            )  # fmt: skip
    # Oldest first, so that the newest row of a pair wins as it does in the log.
    return sorted(rows, key=lambda d: d.decided_at)


def export_csv(
    stores: list[DecisionStore], path: str | os.PathLike[str], history: bool = False
) -> int:
    """Write the decisions of ``stores`` as CSV; return the number of rows written.

    Args:
        stores: the logs to export (one per report folder).
        path: the CSV file to write.
        history: every row (with ``row`` and ``undoes`` columns) instead of the
            current decision of each pair.

    """
    from trainleak.records import ENCODING_ERRORS, csv_cell

    columns = EXPORT_COLUMNS + (["row", "undoes", "log"] if history else [])
    n = 0
    with open(path, "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS) as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for store in stores:
            rows = store.history() if history else list(store.current())
            for d in rows:
                cells = {c: getattr(d, c, None) for c in columns}
                cells["log"] = str(store.path)
                writer.writerow({c: csv_cell(cells[c]) for c in columns})
                n += 1
    return n
