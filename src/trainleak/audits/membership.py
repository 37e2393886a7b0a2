"""``membership``: whether a person was in a generator's training set.

Webster et al. 2021 generate many faces and ask a face-recognition model
whether a person's photos (not the training photos themselves, any photos of
the same person) sit closer to the generated faces than a stranger's would.
This module implements that attack as an estimator:
:class:`IdentityMembership` scores each identity by the similarity between
its photos and their nearest generated samples, ``fit`` on reference people
known not to be in training turns scores into p-values, and
:func:`evaluate` gives ROC AUC and TPR at low FPR with bootstrap intervals
when the members are known. The sample-level loss attack on diffusion models
lives in :mod:`trainleak.audits.loss_attack`.

The scores, the estimator and the evaluation are array-level and live in
:mod:`trainleak.audits.membership_scores`; ``report.json`` is assembled in
:mod:`trainleak.audits.membership_report`. This module embeds the photos,
streams the generator's samples, runs the attack and keeps the few closest
samples the report page shows, so that writing the report generates nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from trainleak.audits.identity_inputs import load_identities, photos_paths
from trainleak.audits.inputs import make_embedder
from trainleak.audits.membership_report import (
    SHOWN_IDENTITIES,
    SHOWN_SAMPLES,
    build_identity_report,
)

# The array-level attack, re-exported: it lived here and is this module's API.
from trainleak.audits.membership_scores import FPRS as FPRS
from trainleak.audits.membership_scores import IdentityMembership as IdentityMembership
from trainleak.audits.membership_scores import IdentityScores as IdentityScores
from trainleak.audits.membership_scores import evaluate as evaluate
from trainleak.audits.membership_scores import identity_scores as identity_scores
from trainleak.audits.sampling import (
    GeneratedSet,
    folder_as_generated,
    generator_fingerprint,
    sample_id,
    sample_pngs,
    stream_embed,
)
from trainleak.config import Headline as Headline  # re-exported: it lived here
from trainleak.config import MembershipConfig as MembershipConfig  # re-exported: it lived here
from trainleak.embedding import Embedder
from trainleak.errors import AuditInputError
from trainleak.generators import Generator, get_generator, is_generator_spec
from trainleak.result import Result

log = logging.getLogger(__name__)


def embed_generated(
    generated: str, embedder: Embedder, config: MembershipConfig
) -> tuple[GeneratedSet, Generator | None, list[str]]:
    """Embed a folder of generated images, or stream a generator's samples.

    Returns:
        ``(set, generator or None, sample ids)``, one id per embedded row.

    """
    if not is_generator_spec(generated):
        emb = embedder.embed(generated, "generated")
        if len(emb) == 0:
            raise AuditInputError(f"no usable generated image in {generated!r}")
        return folder_as_generated(emb), None, list(emb.ids)
    options: dict[str, Any] = {}
    if generated.startswith("diffusers:") and config.steps is not None:
        options["steps"] = config.steps
    generator = get_generator(generated, **options)
    fp = generator_fingerprint(generator, extra=f"steps={config.steps}")
    gen = stream_embed(
        generator, embedder, config.n_samples, config.seed, config.gen_batch_size, fp
    )
    if len(gen.indices) == 0:
        reasons = sorted({s.reason for s in gen.skipped})
        raise AuditInputError(
            f"none of the {config.n_samples} generated samples could be embedded "
            f"({'; '.join(reasons)}); for face crops try --aligned"
        )
    return gen, generator, [sample_id(config.seed, int(i)) for i in gen.indices]


def membership(
    generated: str,
    identities: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    members: set[str] | None = None,
    *,
    config: MembershipConfig | None = None,
    argv: list[str] | None = None,
) -> MembershipResult:
    """Run the identity membership attack and build its report.

    Args:
        generated: a folder of generated images, ``diffusers:DIR`` or
            ``python:module:function``.
        identities: the query, one sub-folder of photos per person.
        reference: people known not to be in training (same layout); each
            query then gets a p-value.
        members: names of the query identities that are members (evaluation).
        config: settings (:class:`MembershipConfig` defaults).
        argv: the command line, recorded in the report.

    Returns:
        A :class:`MembershipResult`; ``result.write(dir)`` writes the reports.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for sub in ("gen", "ids/ann", "ids/bob"):
        ...     (d / sub).mkdir(parents=True)
        >>> Image.radial_gradient("L").save(d / "gen" / "0.png")
        >>> Image.radial_gradient("L").save(d / "ids" / "ann" / "1.png")
        >>> Image.linear_gradient("L").save(d / "ids" / "bob" / "1.png")
        >>> cfg = MembershipConfig(n_boot=10); cfg.embed.encoder = "pixel"
        >>> cfg.embed.workers = 1; cfg.embed.no_cache = True
        >>> r = membership(str(d / "gen"), d / "ids", members={"ann"}, config=cfg)
        >>> r.report["summary"]["auc"], r.report["identities"][0]["identity"]
        (1.0, 'ann')

    """
    config = config or MembershipConfig()
    with make_embedder(config.embed) as embedder:
        photos, query_set, bad = load_identities(embedder, identities, "identities")
        ref = load_identities(embedder, reference, "reference") if reference is not None else None
        gen, generator, sample_ids = embed_generated(generated, embedder, config)
    attack = IdentityMembership(gen.vectors, top_m=config.top_m, score=config.score)
    p_values = None
    if ref is not None:
        p_values = attack.fit(ref[0]).p_values(photos)
    report = build_identity_report(
        config,
        attack.details(photos),
        p_values,
        members,
        query_set,
        ref,
        bad,
        gen,
        generated,
        sample_ids,
        argv if argv is not None else list(sys.argv),
    )
    closest = closest_samples(report, generator, gen, config.seed)
    return MembershipResult(report, photos_paths(query_set), closest)


def closest_samples(
    report: dict[str, Any], generator: Generator | None, gen: GeneratedSet, seed: int
) -> dict[str, bytes]:
    """PNG images of the generated samples the report page shows, by sample id.

    Streamed samples are not kept (that keeps memory flat however many are
    drawn), so the few the page shows, the closest samples of the top
    identities, are drawn again here from their seeds while the audit still
    holds the generator. A folder's generated images are files already: none.

    Args:
        report: the identity report, rows highest score first.
        generator: the generator, or ``None`` for a folder of images.
        gen: the embedded samples (their indices).
        seed: the run's seed.

    Returns:
        Sample id -> PNG bytes, for the ``SHOWN_SAMPLES`` nearest samples of
        the ``SHOWN_IDENTITIES`` top identities.

    """
    if generator is None:
        return {}
    index = {sample_id(seed, int(i)): int(i) for i in gen.indices}
    wanted = {
        n["sample"]
        for row in report["identities"][:SHOWN_IDENTITIES]
        for n in row["nearest"][:SHOWN_SAMPLES]
    }
    pngs = sample_pngs(generator, sorted(index[w] for w in wanted), seed)
    return {sample_id(seed, i): png for i, png in pngs.items()}


class MembershipResult(Result):
    """What a membership run found: the report dict, and what the HTML needs."""

    @property
    def verdict(self) -> str:
        """E.g. ``AUC 0.97 over 40 queries; 12 with p < 0.05``."""
        s = self.report["summary"]
        parts = []
        if s.get("auc") is not None:
            parts.append(f"AUC {s['auc']:.3f}")
        parts.append(f"{s['n_queries']} queries scored")
        if s.get("n_p_below_0.05") is not None:
            parts.append(f"{s['n_p_below_0.05']} with p < 0.05")
        return "; ".join(parts)

    def __init__(
        self,
        report: dict[str, Any],
        photos: dict[str, list[str]] | None = None,
        closest: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(report)
        # What the page shows besides the report: each identity's photo paths,
        # and the closest generated samples as PNG bytes by sample id (kept by
        # the audit, so writing the report never runs the generator).
        self.photos = photos or {}
        self.closest = closest or {}


