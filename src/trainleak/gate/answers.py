"""How the gate answers: one verdict per input, or per person, from an opened index.

The rules are described in :mod:`trainleak.gate.check`; this module applies
them to an :class:`~trainleak.gate.opened.OpenedIndex` (the facade
:class:`~trainleak.gate.index.Index` calls it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from trainleak.decide.calibration import Calibration
from trainleak.decide.failclosed import DAMAGED, damaged_reason, flags
from trainleak.decide.reviewed import apply_decisions, describe
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError, IndexFormatError
from trainleak.gate.ingest import Item, embed_blobs, embed_items, iter_records
from trainleak.gate.opened import OpenedIndex
from trainleak.gate.verdict import Inputs, MatchKind, Verdict

#: A block's reason in words, by what its evidence shows.
MATCH_WORDS: dict[MatchKind, str] = {
    "copy": "a copy of a training image",
    "same person": "the same person as in a training image",
}


def iter_verdicts(index: OpenedIndex, inputs: Inputs) -> Iterator[Verdict]:
    """Yield one verdict per input, reading images a batch at a time."""
    for verdict, _ in _iter_with_person(index, inputs):
        yield verdict


def encoded_verdicts(index: OpenedIndex, items: Sequence[tuple[str, bytes]]) -> list[Verdict]:
    """Verdicts for in-memory encoded images ``(name, bytes)``, e.g. an HTTP upload."""
    return [v for v, _ in _item_verdicts(index, embed_blobs(index.embedder(), items))]


def _iter_with_person(index: OpenedIndex, inputs: Inputs) -> Iterator[tuple[Verdict, str]]:
    batch = max(1, index.config.batch)
    if isinstance(inputs, np.ndarray):
        vectors = np.asarray(inputs, np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        for b0 in range(0, len(vectors), batch):
            names = [str(i) for i in range(b0, min(b0 + batch, len(vectors)))]
            for v in _decide(index, names, vectors[b0 : b0 + batch]):
                yield v, "vectors"
        return
    if isinstance(inputs, EmbeddingSet):
        if inputs.info.cache_key() != index.encoder_info.cache_key():
            raise AuditInputError(
                f"the set was embedded with {inputs.info.cache_key()}, the index with "
                f"{index.encoder_info.cache_key()}: embed it with the index's encoder"
            )
        for b0 in range(0, len(inputs), batch):
            names = inputs.ids[b0 : b0 + batch]
            persons = [lab or inputs.root for lab in inputs.labels[b0 : b0 + batch]]
            digests = inputs.digests[b0 : b0 + batch] if inputs.digests else None
            verdicts = _decide(index, names, inputs.vectors[b0 : b0 + batch], digests)
            yield from zip(verdicts, persons, strict=True)
        for s in inputs.skipped:
            yield _skip(index, s.path, s.reason), inputs.root
        return
    for items in embed_items(index.embedder(), iter_records(inputs), batch):
        yield from _item_verdicts(index, items)


def _item_verdicts(index: OpenedIndex, items: list[Item]) -> list[tuple[Verdict, str]]:
    """Verdicts of embedded items; an image with several faces is judged by its best face."""
    usable = [it for it in items if it.rows is not None]
    best: dict[int, tuple[float, int, float, str | None]] = {}
    if usable:
        blocks = [it.rows for it in usable if it.rows is not None]
        rows = np.concatenate(blocks)
        owner = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
        sc = index.score(rows)
        for r, o in enumerate(owner):
            cand = (float(sc.score[r]), int(sc.best[r]), float(sc.best_sim[r]), sc.label(r))
            # A face whose score decides nothing (NaN) is the image's answer: fail closed.
            if int(o) not in best or not math.isfinite(cand[0]) or cand[0] > best[int(o)][0]:
                best[int(o)] = cand
    out: list[tuple[Verdict, str]] = []
    j = 0
    for it in items:
        if it.rows is None:
            out.append((_skip(index, it.record.id, it.reason), it.person))
            continue
        score, row, _, ident = best[j]
        j += 1
        verdict = _verdict(index, it.record.id, score, row, ident, it.digest)
        out.append((verdict, it.person))
    return out


def _decide(
    index: OpenedIndex,
    names: Sequence[str],
    vectors: np.ndarray,
    digests: Sequence[str] | None = None,
) -> list[Verdict]:
    sc = index.score(vectors)
    return [
        _verdict(
            index,
            name,
            float(sc.score[i]),
            int(sc.best[i]),
            sc.label(i),
            digests[i] if digests else None,
        )
        for i, name in enumerate(names)
    ]


def _skip(index: OpenedIndex, path: str, reason: str) -> Verdict:
    return Verdict(path, "skip", None, None, index.threshold, None, reason)


def _verdict(
    index: OpenedIndex,
    path: str,
    score: float,
    row: int,
    identity: str | None,
    digest: str | None = None,
) -> Verdict:
    """Decide one input: the threshold, the fail-closed rule, then the reviewers' rule."""
    t = index.threshold
    damage = _damage(index, score, row)
    rec: dict[str, Any] = {}
    if damage is None and row >= 0:
        try:
            rec = index.rows([row])[0] or {}
        except IndexFormatError as err:
            damage = f"the row the search found cannot be read ({err})"
        if not rec and damage is None:
            damage = f"the search found row {row}, which the index does not hold"
    empty = row < 0 and damage is None  # an index with no live rows: nothing to match
    flagged = (not empty and bool(flags(np.array([score]), t)[0])) or damage is not None
    target = None if damage or empty else rec.get("digest")
    ruling = apply_decisions(flagged, target, index.decisions.current().lookup(digest))
    found = damage is None and not empty
    shown = f"{score:.4f}" if found else "n/a"
    if ruling.decision is not None:
        d = ruling.decision
        side = ">" if found and score > t else "<="
        words = f"reviewed: {describe(d)}; similarity {shown} {side} threshold {t:.4f}"
        if not ruling.flagged:
            return Verdict(path, "release", None, score, t, None, words, describe(d))
        same = found and rec.get("digest") == d.train_hash
        nearest = str(rec.get("id")) if same else (d.train or f"content {d.train_hash}")
        similarity = score if found else None
        match = _match(index, digest, d.train_hash)
        return Verdict(
            path, "block", nearest, similarity, t, identity if same else None, words, describe(d),
            match,
        )  # fmt: skip
    if damage is not None:
        return Verdict(path, "block", None, None, t, None, damaged_reason(damage))
    if empty:
        return Verdict(path, "release", None, None, t, None, "the index has no training rows")
    if ruling.flagged:
        match = _match(index, digest, rec.get("digest"))
        return Verdict(
            path,
            "block",
            str(rec.get("id")),
            score,
            t,
            identity,
            f"{MATCH_WORDS[match]}: {score:.4f} > threshold {t:.4f}",
            match=match,
        )
    return Verdict(path, "release", None, score, t, None, f"{score:.4f} <= threshold {t:.4f}")


def _match(index: OpenedIndex, digest: str | None, train_digest: str | None) -> MatchKind:
    """Say what a block shows, from the evidence the index holds (see ``Verdict.match``)."""
    if digest is not None and digest == train_digest:
        return "copy"  # the same bytes: a copy whatever the encoder compares
    return "copy" if index.encoder_info.kind == "copy" else "same person"


def _damage(index: OpenedIndex, score: float, row: int) -> str | None:
    """Say why a score decides nothing (fail closed), or ``None`` when it can be trusted."""
    if index.damage:
        return index.damage
    if not math.isfinite(score):
        return f"the score is {score} (a training vector holds NaN or infinite values)"
    if row < 0 and len(index):
        return f"the search found no training row although the index holds {len(index)}"
    return None


def identity_verdicts(index: OpenedIndex, inputs: Inputs) -> list[Verdict]:
    """Answer per person whether their face is in the training set."""
    people: dict[str, dict[str, Any]] = {}
    for v, person in _iter_with_person(index, inputs):
        p = people.setdefault(
            person, {"photos": 0, "skipped": 0, "best": None, "keys": {}, "damaged": []}
        )
        if v.verdict == "skip":
            p["skipped"] += 1
            continue
        p["photos"] += 1
        if v.reason.startswith(DAMAGED):
            p["damaged"].append(v)  # one photo that decides nothing decides the person: blocked
        if p["best"] is None or (v.similarity or -math.inf) > (p["best"].similarity or -math.inf):
            p["best"] = v
        if v.verdict == "block":
            key = v.identity or v.nearest or ""
            p["keys"][key] = p["keys"].get(key, 0) + 1
    return [_person_verdict(index, name, p) for name, p in sorted(people.items())]


def _person_verdict(index: OpenedIndex, name: str, p: dict[str, Any]) -> Verdict:
    t = index.threshold
    best: Verdict | None = p["best"]
    if best is None:
        reason = f"no usable photo ({p['skipped']} skipped)"
        return Verdict(name, "skip", None, None, t, None, reason)
    m = p["photos"]
    if p["damaged"]:
        first: Verdict = p["damaged"][0]
        reason = f"{first.reason} ({len(p['damaged'])} of {m} photo(s))"
        return Verdict(name, "block", None, None, t, None, reason)
    rate = false_match_words(index.calibration, m)
    if best.verdict != "block":
        shown = "n/a" if best.similarity is None else f"{best.similarity:.4f}"
        reason = f"not found: none of {m} photo(s) passes the threshold {t:.4f} (best {shown}); "
        return Verdict(name, "release", None, best.similarity, t, None, reason + rate)
    key = best.identity or best.nearest or ""
    who = f"identity {best.identity}" if best.identity else f"training image {best.nearest}"
    reason = (
        f"likely in the training set: {p['keys'].get(key, 0)} of {m} photo(s) match {who} "
        f"(best {_shown(best.similarity)} > threshold {t:.4f}); "
    )
    return Verdict(
        name, "block", best.nearest, best.similarity, t, best.identity, reason + rate,
        match=best.match,
    )  # fmt: skip


def _shown(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def false_match_rate(threshold: Calibration, photos: int = 1) -> float | None:
    """Upper bound on the chance that ``photos`` photos of a stranger pass the threshold.

    ``None`` when the threshold was not calibrated on a holdout. Counted over
    images, it is ``photos`` times the per-photo rate (a union bound), a
    holdout in which no score passed counting as ``3 / n`` (the 95% "rule of
    three"). Counted over people (the holdout's photos carried person labels),
    it is the exact 95% upper bound of the share of holdout people with a
    photo above the threshold, times ``ceil(photos / h)`` when the stranger has
    more photos than the ``h`` a holdout person had on average (a union bound
    over groups of ``h`` photos).

    Example:
        >>> false_match_rate(Calibration(0.9, "holdout", 0.01, 0.01, 0.001), 3)
        0.03
        >>> people = Calibration(0.9, "holdout", 0.05, 0.0, 1 / 30, (0.0, 0.1157), "people",
        ...                      details={"n_people": 30, "n_images": 60, "people_above": 0})
        >>> round(false_match_rate(people, 2), 4), round(false_match_rate(people, 5), 4)
        (0.1157, 0.3471)

    """
    if not threshold.calibrated:
        return None
    if threshold.counted_over == "people" and threshold.interval is not None:
        groups, _ = _photo_groups(threshold, photos)
        return min(1.0, groups * float(threshold.interval[1]))
    per = float(threshold.achieved_fpr or 0.0) or 3 * float(threshold.resolvable_fpr or 0.0)
    return min(1.0, photos * per)


def _photo_groups(threshold: Calibration, photos: int) -> tuple[int, float]:
    """``(ceil(photos / h), h)``: ``h`` the photos per holdout person, on average."""
    n_people = int(threshold.details.get("n_people") or 0)
    n_images = int(threshold.details.get("n_images") or 0)
    per_person = n_images / n_people if n_people and n_images else 1.0
    # round() first: 3 photos against 2.9999999 per person is one group, not two.
    return max(1, math.ceil(round(photos / per_person, 6))), per_person


def false_match_words(threshold: Calibration, photos: int = 1) -> str:
    """Say the calibrated false-match rate in words, for ``photos`` photos of one person.

    Example:
        >>> t = Calibration(0.9, "holdout", 0.01, 0.01, 0.001)
        >>> false_match_words(t, 2)
        'a stranger is falsely matched with at most 2.0% chance for 2 photos (1.0% per photo: 10 of 1000 holdout photos of people not in the index pass the threshold)'
        >>> people = Calibration(0.9, "holdout", 0.05, 1 / 30, 1 / 30, (0.0008, 0.1722),
        ...     "people", details={"n_people": 30, "n_images": 60, "people_above": 1})
        >>> false_match_words(people, 2)
        'a stranger is falsely matched with at most 17.2% chance (95% upper bound counted over people: 1 of 30 holdout people not in the index, 2 photos each on average, have a photo above the threshold)'

    """  # noqa: E501
    if not threshold.calibrated:
        return (
            f"the threshold is {threshold.method}, not calibrated on a holdout, "
            "so the false-match rate is unknown (build the index with --holdout to know it)"
        )
    if threshold.counted_over == "people" and threshold.interval is not None:
        return _people_words(threshold, photos)
    n = round(1 / float(threshold.resolvable_fpr or 1.0))
    achieved = float(threshold.achieved_fpr or 0.0)
    per_photo = false_match_rate(threshold, 1) or 0.0
    # With none passing, the per-photo rate is the 95% bound 3/n (rule of three).
    passed = f"{round(achieved * n)} of {n}" if achieved > 0 else f"none of {n}"
    evidence = f"{passed} holdout photos of people not in the index pass the threshold"
    if photos == 1:
        return f"a stranger is falsely matched with at most {per_photo:.1%} chance ({evidence})"
    bound = false_match_rate(threshold, photos) or 0.0
    return (
        f"a stranger is falsely matched with at most {bound:.1%} chance for {photos} photos "
        f"({per_photo:.1%} per photo: {evidence})"
    )


def _people_words(threshold: Calibration, photos: int) -> str:
    """:func:`false_match_words` for a threshold calibrated over people."""
    groups, per_person = _photo_groups(threshold, photos)
    n = int(threshold.details.get("n_people") or round(1 / float(threshold.resolvable_fpr or 1)))
    above = threshold.details.get("people_above")
    if above is None:
        above = round(float(threshold.achieved_fpr or 0.0) * n)
    hi = float(threshold.interval[1]) if threshold.interval is not None else 1.0
    bound = false_match_rate(threshold, photos) or 0.0
    evidence = (
        f"{int(above)} of {n} holdout people not in the index, {per_person:.3g} photos each "
        "on average, have a photo above the threshold"
    )
    if groups == 1:
        return (
            f"a stranger is falsely matched with at most {bound:.1%} chance "
            f"(95% upper bound counted over people: {evidence})"
        )
    return (
        f"a stranger is falsely matched with at most {bound:.1%} chance for {photos} photos "
        f"({groups} times the 95% upper bound {hi:.1%} for a holdout person's "
        f"{per_person:.3g} photos, counted over people: {evidence})"
    )
