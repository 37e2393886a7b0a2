"""``evidence``: "was my data used?" for one owner, with a packet a third party can re-run.

A person hands over photos of themself (or an artist their works), the
images to search (a synthetic dataset, a folder of generated images, or a
generator that is sampled), and images of other people (other artists) of
the same kind that were never trained on: the reference. The owner's best
match among the searched images is ranked among the reference owners' best
matches; the rank gives a p-value (the test, its assumptions and its
smallest attainable p are in :mod:`trainleak.audits._evidence_stats`).

The matched pairs are listed best first, each labelled *near-copy* (the same
picture, possibly edited: the pixel-level similarity, or a copy encoder's
match, is very high) or *look-alike* (a different picture the encoder
matches: the same person, or a similar work).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from trainleak.audits._evidence_packet import (
    ASSUMPTIONS,
    METHOD,
    Against,
    build_packet,
    generator_files,
    set_files,
)
from trainleak.audits._evidence_stats import (
    OwnerMatches,
    decide,
    owner_matches,
    rank_p_value,
)
from trainleak.audits.identity_inputs import load_identities
from trainleak.audits.inputs import embed_nonempty, make_embedder, one_way
from trainleak.audits.membership import embed_generated
from trainleak.audits.sampling import GeneratedSet, sample_pngs
from trainleak.config import EmbedConfig, EvidenceConfig, EvidenceStatistic, MembershipConfig
from trainleak.embedding import Embedder, EmbeddingSet, keyword_config
from trainleak.encoders import get_encoder
from trainleak.encoders.base import EncoderInfo
from trainleak.generators import is_generator_spec
from trainleak.images import decode_image, load_image
from trainleak.result import Result
from trainleak.similarity import Similarity

log = logging.getLogger(__name__)


def evidence(
    mine: str | os.PathLike[str],
    against: str,
    reference: str | os.PathLike[str] | None = None,
    *,
    encoder: str = EmbedConfig.encoder,
    encoder_options: dict[str, Any] | None = None,
    statistic: EvidenceStatistic = EvidenceConfig.statistic,
    alpha: float = EvidenceConfig.alpha,
    n_samples: int = EvidenceConfig.n_samples,
    seed: int = EvidenceConfig.seed,
    workers: int | None = EmbedConfig.workers,
    cache: str | os.PathLike[str] | bool = True,
    config: EvidenceConfig | None = None,
    argv: list[str] | None = None,
) -> EvidenceResult:
    """Was my data used? One owner's matches against reference owners', with a p-value.

    Args:
        mine: the owner's images: photos of the person, or an artist's works
            (a folder, glob or list; sub-folders are all the owner's).
        against: where to look: a folder of synthetic or generated images, or
            a generator (``diffusers:DIR``, ``python:module:function``), then
            ``n_samples`` samples are drawn.
        reference: other owners never trained on, one sub-folder each; without
            it (or with fewer than ``1 / alpha - 1`` owners) the verdict is
            "cannot tell".
        encoder: ``face`` for a person; ``copy`` (or ``pixel``) for an artist's works.
        encoder_options: the encoder's options.
        statistic: ``max`` (best match) or ``count`` (matches above the threshold).
        alpha: significance level of the verdict.
        n_samples: samples drawn from a generator.
        seed: sampling seed.
        workers: embedding processes.
        cache: the embedding cache folder, ``True`` or ``False``.
        config: all settings at once; a keyword that disagrees with it is an error.
        argv: the command line recorded in the packet (default ``sys.argv``).

    Returns:
        An :class:`EvidenceResult`; ``result.write(dir)`` writes the packet.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for sub in ("mine", "gen", "ref/bob"):
        ...     (d / sub).mkdir(parents=True)
        >>> Image.radial_gradient("L").save(d / "mine" / "1.png")
        >>> Image.radial_gradient("L").save(d / "gen" / "0.png")
        >>> Image.linear_gradient("L").save(d / "ref" / "bob" / "1.png")
        >>> r = evidence(d / "mine", str(d / "gen"), d / "ref", encoder="pixel", cache=False)
        >>> r.report["verdict"]["key"], r.report["summary"]["p_value"]
        ('cannot_tell', 0.5)

    """
    config = one_way(
        config,
        EvidenceConfig(
            embed=keyword_config(encoder, encoder_options, workers, cache),
            statistic=statistic,
            alpha=alpha,
            n_samples=n_samples,
            seed=seed,
        ),
        EvidenceConfig(),
    )
    return run_evidence(mine, against, reference, config=config, argv=argv)


def run_evidence(
    mine: str | os.PathLike[str],
    against: str,
    reference: str | os.PathLike[str] | None,
    *,
    config: EvidenceConfig,
    argv: list[str] | None = None,
) -> EvidenceResult:
    """Run ``evidence``: the implementation behind :func:`evidence` and the command."""
    if not 0 < config.alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {config.alpha}")
    with make_embedder(config.embed) as embedder:
        own = embed_nonempty(embedder, mine, "mine")
        ref: dict[str, np.ndarray] = {}
        ref_emb: EmbeddingSet | None = None
        ref_bad: list[Any] = []
        if reference is not None:
            ref, ref_emb, ref_bad = load_identities(embedder, reference, "reference")
        found = _embed_against(against, embedder, config)
    info = own.info
    left_out = _contaminated(own, ref_emb)
    for name in left_out:
        ref.pop(name, None)
    sim = Similarity.of(info)
    threshold = config.threshold if config.threshold is not None else info.default_threshold
    user = owner_matches(own.vectors, found.gen.vectors, sim, threshold)
    others = {n: owner_matches(v, found.gen.vectors, sim, threshold) for n, v in ref.items()}
    stat = user.statistic(config.statistic)
    null = np.array([m.statistic(config.statistic) for m in others.values()], np.float64)
    p = rank_p_value(stat, null)
    key = decide(p, len(others), config.alpha)
    pairs, pngs = _pairs(user, own, found, info, threshold, config)
    report = build_packet(
        config, info, own, found, ref_emb, others, user, stat, p, key, threshold, pairs, argv
    )
    report["reference_left_out"] = [
        {"owner": n, "reason": "shares a file with --mine (same bytes)"} for n in left_out
    ]
    report["skipped"] = [
        s.to_dict()
        for s in [*own.skipped, *(ref_emb.skipped if ref_emb else []), *ref_bad, *found.gen.skipped]
    ]
    return EvidenceResult(report, pngs)


def _embed_against(against: str, embedder: Embedder, config: EvidenceConfig) -> Against:
    if not is_generator_spec(against):
        emb = embed_nonempty(embedder, against, "against")
        gen = GeneratedSet(np.arange(len(emb), dtype=np.int64), emb.vectors, list(emb.skipped))
        return Against(gen, list(emb.ids), emb, None, set_files(emb, "against"))
    sampling = MembershipConfig(
        embed=config.embed,
        n_samples=config.n_samples,
        seed=config.seed,
        gen_batch_size=config.gen_batch_size,
        steps=config.steps,
    )
    gen, generator, ids = embed_generated(against, embedder, sampling)
    assert generator is not None  # a generator spec always gives one
    return Against(gen, ids, None, generator, generator_files(generator))


def _contaminated(own: EmbeddingSet, ref: EmbeddingSet | None) -> list[str]:
    """Return the reference owners holding a file of the owner's (no stand-ins for strangers)."""
    if ref is None or not own.digests or not ref.digests:
        return []
    mine = set(own.digests)
    bad = sorted({lab for lab, d in zip(ref.labels, ref.digests, strict=True) if d in mine and lab})
    if bad:
        log.warning("reference owners left out (they hold a file of --mine): %s", ", ".join(bad))
    return bad


def _pairs(
    user: OwnerMatches,
    own: EmbeddingSet,
    found: Against,
    info: EncoderInfo,
    threshold: float,
    config: EvidenceConfig,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Return the best ``config.pairs`` matched pairs, each labelled near-copy or look-alike.

    Returns:
        The pair rows, and PNG bytes of the generated samples among them (by
        sample id) for the page; a folder's images are files already.

    """
    order = np.argsort(-user.score, kind="stable")[: config.pairs]
    order = order[np.isfinite(user.score[order])]
    pngs: dict[str, bytes] = {}
    if found.generator is not None:
        indices = [int(found.gen.indices[j]) for j in order]
        by_index = sample_pngs(found.generator, indices, config.seed)
        pngs = {found.ids[j]: by_index[int(found.gen.indices[j])] for j in order}
    pixel = get_encoder("pixel")
    pixel_sim = Similarity.of(pixel.info)
    copy_at = config.copy_threshold
    if copy_at is None:
        copy_at = pixel.info.default_threshold
    copy_kind = getattr(info, "kind", None) == "copy"
    rows = []
    for rank, j in enumerate(order, start=1):
        mine_path = own.paths[int(user.photo[j])] if own.paths else own.ids[int(user.photo[j])]
        theirs = found.ids[j]
        try:
            a = pixel.encode(load_image(mine_path))
            b_img = (
                decode_image(pngs[theirs])
                if theirs in pngs
                else load_image(found.emb.paths[j] if found.emb is not None else theirs)
            )
            pix = float(pixel_sim.pairwise(a, pixel.encode(b_img))[0, 0])
        except Exception as err:  # noqa: BLE001 - one unreadable pair must not stop the packet
            log.warning("pixel similarity of %s and %s failed: %s", mine_path, theirs, err)
            pix = float("nan")
        score = float(user.score[j])
        rows.append(
            {
                "rank": rank,
                "mine": own.ids[int(user.photo[j])],
                "against": theirs,
                "against_path": found.emb.paths[j] if found.emb is not None else None,
                "score": score,
                "pixel_similarity": pix,
                "match": score >= threshold,
                "label": _label(score, pix, threshold, copy_at, copy_kind),
            }
        )
    return rows, pngs


def _label(score: float, pixel: float, threshold: float, copy_at: float, copy_kind: bool) -> str:
    """``near-copy``, ``look-alike`` or ``below threshold``.

    Example:
        >>> _label(0.7, 0.999, 0.6, 0.998, False), _label(0.7, 0.9, 0.6, 0.998, False)
        ('near-copy', 'look-alike')
        >>> _label(0.95, 0.9, 0.9, 0.998, True), _label(0.5, 0.9, 0.6, 0.998, False)
        ('near-copy', 'below threshold')

    """
    if (np.isfinite(pixel) and pixel >= copy_at) or (copy_kind and score >= threshold):
        return "near-copy"
    return "look-alike" if score >= threshold else "below threshold"


class EvidenceResult(Result):
    """What ``evidence`` found: the packet dict, and PNGs of generated samples it shows."""

    def __init__(self, report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> None:
        super().__init__(report)
        self.pngs = pngs or {}

    @property
    def verdict(self) -> str:
        """The verdict in plain words, with the p-value."""
        return str(self.report["verdict"]["text"])


__all__ = ["ASSUMPTIONS", "METHOD", "EvidenceResult", "evidence", "run_evidence"]
