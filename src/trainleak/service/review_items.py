"""The candidates a person reviews, read from any trainleak report folder.

One :class:`Candidate` is one pair a person judges: a synthetic (generated)
image and the training image it may copy. ``audit`` gives one per synthetic
sample (its matched training neighbour), ``extract`` one per clique of
near-identical generations (its representative and nearest training image),
``dedup`` one per near-duplicate beside its cluster's kept image, and
``membership`` one per person (the closest generated samples; the person's
photos are not in the report, so the pair is the sample and ``identity:NAME``).

Images are named by the report only: the
:class:`~trainleak.service.review_images.ImageTable` holds every path the
reports list, and the page asks for images by their number in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainleak.errors import TrainleakError
from trainleak.service.review_images import ImageTable

#: What each kind of report asks the reviewer, and the words of its two verdicts.
QUESTIONS = {
    "audit": "Is the synthetic image a copy, or the same person, as the training image?",
    "extract": "Did the generator reproduce this training image?",
    "dedup": "Are these the same picture (a near-duplicate)?",
    "membership": "Do the closest generated samples show this person (was it in training)?",
}
#: An audit's question by its encoder's kind (``encoder.kind`` in report.json): a copy
#: encoder's evidence is a copy of a work, an identity encoder's is a person, who may
#: appear in a photo that is no copy of any training image.
AUDIT_QUESTIONS = {
    "copy": "Is this a copy of the artwork (the training image)?",
    "identity": "Is this the same person as in the training photo?",
}
#: Training neighbours shown beside an audit's synthetic image (the decided pair first).
SHOWN_NEIGHBOURS = 3
#: Clique members / closest samples shown for extract and membership candidates.
SHOWN_MEMBERS = 4


class ReviewInputError(TrainleakError):
    """A folder that holds no report ``review`` can show."""


@dataclass
class Shown:
    """One image on the page: its number in the :class:`ImageTable` and a caption."""

    image: int
    path: str
    caption: str


@dataclass
class Candidate:
    """One pair a person judges, with what the page shows beside it.

    Attributes:
        id: ``"{report}-{n}"``, stable for a report; the page's ``#`` anchor.
        report: the report's number on the command line (0-based).
        kind: ``audit``, ``extract``, ``dedup`` or ``membership``.
        ref: the report's own name of the candidate (synthetic path,
            clique representative, duplicate path, identity); report.html
            rows carry it as ``data-review``.
        synthetic: the pair's synthetic side, as the report lists it.
        train: the pair's training side (``identity:NAME`` for membership).
        score: the report's number for it; ``order`` says which way is worse.
        score_name: what ``score`` is.
        threshold: the report's operating point on ``score`` (or ``None``).
        flagged: whether the report flags it.
        identity: the training identity, when known.
        left: the synthetic/generated images shown.
        right: the training images shown.
        facts: further ``(label, value)`` lines for the page.
        order: sort key, higher = more suspicious.
        pair_images: the :class:`ImageTable` numbers of ``synthetic`` and
            ``train`` (``None`` for a side that is no file: a streamed
            sample, an identity).
        question: what the page asks (:func:`question`); empty for the
            report kind's generic question.
        evidence: the report's picture of where the pair matches (a copy
            encoder's ``evidence/pair-NNN.png``), when it drew one.

    """

    id: str
    report: int
    kind: str
    ref: str
    synthetic: str
    train: str
    score: float | None
    score_name: str
    threshold: float | None
    flagged: bool
    identity: str | None
    left: list[Shown] = field(default_factory=list)
    right: list[Shown] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    order: float = 0.0
    pair_images: tuple[int | None, int | None] = (None, None)
    question: str = ""
    evidence: Shown | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON the page reads (images as URLs)."""

        def shown(items: list[Shown]) -> list[dict[str, Any]]:
            return [
                {"url": f"/image/{s.image}", "path": s.path, "caption": s.caption} for s in items
            ]

        return {
            "id": self.id,
            "report": self.report,
            "kind": self.kind,
            "ref": self.ref,
            "question": self.question or QUESTIONS[self.kind],
            "synthetic": self.synthetic,
            "train": self.train,
            "score": self.score,
            "score_name": self.score_name,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "identity": self.identity,
            "left": shown(self.left),
            "right": shown(self.right),
            "facts": [list(f) for f in self.facts],
            "evidence": shown([self.evidence])[0] if self.evidence else None,
        }


@dataclass
class ReviewReport:
    """One report folder under review."""

    number: int
    folder: Path
    report: dict[str, Any]
    kind: str
    encoder_key: str
    redacted: bool
    candidates: list[Candidate]

    def summary(self) -> dict[str, Any]:
        """Return what the page shows of the report itself."""
        t = self.report.get("threshold") or {}
        return {
            "number": self.number,
            "folder": str(self.folder),
            "kind": self.kind,
            "command": self.report.get("command"),
            "created": self.report.get("created"),
            "encoder": (self.report.get("encoder") or {}).get("name"),
            "encoder_key": self.encoder_key,
            "threshold": t.get("value"),
            "threshold_method": t.get("method"),
            "redacted": self.redacted,
            "candidates": len(self.candidates),
        }


def encoder_key(encoder: dict[str, Any]) -> str:
    """Return ``EncoderInfo.cache_key()`` of the encoder a report describes.

    Example:
        >>> encoder_key({"name": "pixel", "version": 2, "dim": 1024, "metric": "cosine",
        ...              "options": {"size": 32}})[:9]
        'pixel-v2-'

    """
    from trainleak.encoders.base import EncoderInfo

    info = EncoderInfo(
        name=str(encoder["name"]),
        version=int(encoder["version"]),
        dim=int(encoder["dim"]),
        metric=encoder.get("metric", "cosine"),
        default_threshold=0.0,
        threshold_note="",
        options=dict(encoder.get("options") or {}),
        weights_sha256=encoder.get("weights_sha256"),
    )
    return info.cache_key()


def question(kind: str, encoder_kind: str | None) -> str:
    """Return what the page asks about a candidate of ``kind`` from an encoder of ``encoder_kind``.

    Example:
        >>> question("audit", "identity")
        'Is this the same person as in the training photo?'
        >>> question("audit", None)
        'Is the synthetic image a copy, or the same person, as the training image?'

    """
    if kind == "audit" and encoder_kind in AUDIT_QUESTIONS:
        return AUDIT_QUESTIONS[encoder_kind]
    return QUESTIONS[kind]


def report_kind(report: dict[str, Any]) -> str | None:
    """Return which kind of candidates a report holds, or ``None`` for none."""
    command = report.get("command")
    if command == "audit" and "matches" in report:
        return "audit"
    if command == "extract" and "candidates" in report:
        return "extract"
    if command == "dedup" and "clusters" in report:
        return "dedup"
    if "identities" in report:
        return "membership"
    return None


def read_report(folder: str | os.PathLike[str], number: int, images: ImageTable) -> ReviewReport:
    """Read ``folder/report.json`` into its candidates, highest ``order`` first.

    Raises:
        ReviewInputError: no ``report.json``, or a report with nothing to review.

    """
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReviewInputError(
            f"{folder} holds no readable trainleak report.json ({err}); give the --out "
            "folder of an audit, extract, dedup or membership run"
        ) from None
    kind = report_kind(report)
    if kind is None:
        raise ReviewInputError(
            f"{folder} holds a {report.get('command', 'non-trainleak')!r} report, which has no "
            "candidates to review: review audit, extract, dedup or identity-membership reports"
        )
    where = Path(folder)
    builders = {"audit": _audit, "extract": _extract, "dedup": _dedup, "membership": _membership}
    found = builders[kind](report, lambda p: images.add(p, where))
    found.sort(key=lambda c: (-c.order, c.ref))
    asked = question(kind, (report.get("encoder") or {}).get("kind"))
    for n, c in enumerate(found):
        c.id, c.report, c.question = f"{number}-{n}", number, asked
    settings = report.get("settings") or {}
    redacted = bool(report.get("redacted") or settings.get("redact"))
    key = encoder_key(report["encoder"]) if report.get("encoder") else "unknown"
    return ReviewReport(number, where, report, kind, key, redacted, found)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) else None


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "n/a"


def _audit(report: dict[str, Any], add: Any) -> list[Candidate]:
    by_sample: dict[str, list[dict[str, Any]]] = {}
    for m in report["matches"]:
        by_sample.setdefault(m["synthetic"], []).append(m)
    threshold = _num((report.get("threshold") or {}).get("value"))
    out = []
    for synthetic, rows in by_sample.items():
        rows.sort(key=lambda m: m["rank"])
        # The pair to judge: the flagged one, else one a person reviewed, else the nearest.
        chosen = next((m for m in rows if m["flagged"]), None)
        chosen = chosen or next((m for m in rows if m.get("reviewed")), rows[0])
        shown = [chosen] + [m for m in rows if m is not chosen][: SHOWN_NEIGHBOURS - 1]
        right = [
            Shown(add(m["train"]), m["train"], f"rank {m['rank']}, sim. {_fmt(m['similarity'])}")
            for m in shown
        ]
        score = _num(chosen.get("score"))
        out.append(
            Candidate(
                id="", report=0, kind="audit", ref=synthetic, synthetic=synthetic,
                train=chosen["train"], score=score, score_name="leak score",
                threshold=threshold, flagged=any(m["flagged"] for m in rows),
                identity=chosen.get("train_identity"),
                left=[Shown(add(synthetic), synthetic, "synthetic")], right=right,
                facts=[("similarity", _fmt(chosen["similarity"])), ("rank", str(chosen["rank"]))],
                order=score if score is not None else float("-inf"),
                pair_images=(add(synthetic), add(chosen["train"])),
            )
        )  # fmt: skip
    return out


def _extract(report: dict[str, Any], add: Any) -> list[Candidate]:
    settings = report.get("settings") or {}
    relative = bool(settings.get("relative"))
    out = []
    for c in report["candidates"]:
        train = c.get("train_match") or c.get("nearest_train") or ""
        score = _num(c["relative_distance"] if relative else c["distance"])
        members = [m for m in c.get("members") or [] if m != c["representative"]]
        left = [Shown(add(c["representative"]), c["representative"], "representative")]
        left += [Shown(add(m), m, "clique member") for m in members[: SHOWN_MEMBERS - 1]]
        out.append(
            Candidate(
                id="", report=0, kind="extract", ref=c["representative"],
                synthetic=c["representative"], train=train, score=score,
                score_name="relative distance" if relative else "tiled-l2 distance",
                threshold=_num(settings.get("alpha" if relative else "delta")),
                flagged=bool(c["extracted"]), identity=None, left=left,
                right=[Shown(add(train), train, "nearest training image")] if train else [],
                facts=[("group", str(c["group"])), ("clique size", str(c["clique_size"])),
                       ("distance", _fmt(c["distance"]))],
                order=-score if score is not None else float("-inf"),
                pair_images=(add(c["representative"]), add(train) if train else None),
            )
        )  # fmt: skip
    return out


def _dedup(report: dict[str, Any], add: Any) -> list[Candidate]:
    threshold = _num((report.get("threshold") or {}).get("value"))
    out = []
    for c in report["clusters"]:
        for m in c["members"]:
            if m["path"] == c["kept"]:
                continue
            score = _num(m["similarity_to_kept"])
            out.append(
                Candidate(
                    id="", report=0, kind="dedup", ref=m["path"], synthetic=m["path"],
                    train=c["kept"], score=score, score_name="similarity to the kept image",
                    threshold=threshold, flagged=True, identity=None,
                    left=[Shown(add(m["path"]), m["path"], "duplicate")],
                    right=[Shown(add(c["kept"]), c["kept"], "kept")],
                    facts=[("cluster", str(c["cluster"])), ("cluster size", str(c["size"]))],
                    order=score if score is not None else float("-inf"),
                    pair_images=(add(m["path"]), add(c["kept"])),
                )
            )  # fmt: skip
    return out


def _membership(report: dict[str, Any], add: Any) -> list[Candidate]:
    out = []
    for row in report["identities"]:
        nearest = row.get("nearest") or []
        with_path = [n for n in nearest if n.get("path")][:SHOWN_MEMBERS]
        left = [
            Shown(add(n["path"]), n["path"], f"sim. {_fmt(n['similarity'])}") for n in with_path
        ]
        first = with_path[0]["path"] if with_path else (nearest[0]["sample"] if nearest else "")
        p = row.get("p_value")
        score = _num(row.get("score"))
        out.append(
            Candidate(
                id="", report=0, kind="membership", ref=str(row["identity"]), synthetic=first,
                train=f"identity:{row['identity']}", score=score, score_name="membership score",
                threshold=None, flagged=isinstance(p, (int, float)) and p < 0.05,
                identity=str(row["identity"]), left=left, right=[],
                facts=[("p-value", _fmt(p)), ("photos", str(row.get("photos", "?")))],
                order=score if score is not None else float("-inf"),
                pair_images=(add(first) if with_path else None, None),
            )
        )  # fmt: skip
    return out
