"""The front door: every audit as one call with keywords a user can guess.

``import trainleak as tl`` then ``tl.audit(train=..., synthetic=..., holdout=...,
encoder="face", fpr=0.01)``. Each function here builds its audit's config
from its keywords (the defaults are the config's own fields) and calls the
same function the command line calls. Settings come one way: as keywords,
or all at once as ``config=`` (the command line's way); a keyword that
disagrees with the ``config=`` given is an error, never silently ignored.
Every result follows :class:`trainleak.result.Result`: ``.report``, ``.summary``,
``.verdict``, ``.write(dir)``.

Inputs are paths (folder, glob or list file), an :class:`EmbeddingSet`
(e.g. from :func:`trainleak.embed`), or an array of vectors (see
:func:`embeddings`): embeddings you already have are audited without
re-reading any image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainleak.audits._leakage import AuditResult
from trainleak.audits._leakage import audit as _audit
from trainleak.audits.extraction import ExtractConfig, ExtractResult
from trainleak.audits.inputs import one_way
from trainleak.audits.membership import MembershipConfig, MembershipResult
from trainleak.config import AuditConfig, DedupConfig, EmbedConfig
from trainleak.decide.decisions import Decisions
from trainleak.embedding import EmbeddingSet, keyword_config
from trainleak.encoders.base import EncoderInfo, Metric, l2_normalise
from trainleak.errors import AuditInputError

#: What an audit accepts as a set of images.
Source = str | os.PathLike[str] | EmbeddingSet | np.ndarray


def embeddings(
    vectors: np.ndarray,
    ids: Sequence[str] | None = None,
    labels: Sequence[str | None] | None = None,
    *,
    metric: Metric = "cosine",
    name: str = "arrays",
) -> EmbeddingSet:
    """Wrap vectors you already have as an :class:`EmbeddingSet` for the audits.

    Cosine rows are L2-normalised here. Arrays carry no encoder operating
    point, so audits of them need a ``holdout`` or a ``threshold``.

    Args:
        vectors: ``(n, dim)`` rows.
        ids: one name per row (default ``"0"``, ``"1"``, ...).
        labels: identity label per row, or ``None``.
        metric: how rows compare.
        name: the encoder name recorded in the report.

    Example:
        >>> s = embeddings(np.eye(2) * 3, ids=["a", "b"])
        >>> s.ids, s.vectors.tolist(), s.info.metric
        (['a', 'b'], [[1.0, 0.0], [0.0, 1.0]], 'cosine')

    """
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or not all(np.isfinite(b).all() for b in _blocks(x)):
        raise AuditInputError(f"vectors must be a finite (n, dim) array, got shape {x.shape}")
    ids = [str(i) for i in range(len(x))] if ids is None else [str(i) for i in ids]
    labels = [None] * len(x) if labels is None else list(labels)
    if len(ids) != len(x) or len(labels) != len(x):
        raise AuditInputError(f"{len(x)} vectors but {len(ids)} ids and {len(labels)} labels")
    info = EncoderInfo(
        name=name,
        version=0,
        dim=int(x.shape[1]),
        metric=metric,
        default_threshold=float("nan"),
        threshold_note="vectors given by the caller: no operating point; pass a holdout "
        "or a threshold",
    )
    rows = _unit_rows(x) if metric == "cosine" else x
    return EmbeddingSet(ids, labels, rows, [], len(x), info, name, list(ids))


# Rows handled at a time when checking or normalising vectors: memory stays at a
# few blocks, not a few copies of the array (a memory map is read block by block).
ROWS_PER_BLOCK = 16384


def _blocks(x: np.ndarray) -> Any:
    return (x[i : i + ROWS_PER_BLOCK] for i in range(0, len(x), ROWS_PER_BLOCK))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows at unit L2 norm, normalised block by block into one new array.

    A read-only array whose rows are already unit (within 1e-5), such as a
    memory map from :func:`trainleak.outofcore.open_vectors`, is used as it is:
    its rows stay on disk until a search reads them.

    Example:
        >>> _unit_rows(np.array([[3.0, 4.0]], np.float32)).tolist()
        [[0.6000000238418579, 0.800000011920929]]

    """
    if not x.flags.writeable and all(
        np.allclose(np.einsum("ij,ij->i", b, b), 1.0, rtol=0, atol=2e-5) for b in _blocks(x)
    ):
        return x
    out = np.empty(x.shape, np.float32)
    for i, b in enumerate(_blocks(x)):
        out[i * ROWS_PER_BLOCK : i * ROWS_PER_BLOCK + len(b)] = l2_normalise(b)
    return out


def _wrap(value: Source) -> str | os.PathLike[str] | EmbeddingSet:
    """Wrap an array of vectors as an :class:`EmbeddingSet` (:func:`embeddings`); pass the rest."""
    return embeddings(value, name="arrays") if isinstance(value, np.ndarray) else value


def audit(
    train: Source,
    synthetic: Source,
    holdout: Source | None = None,
    *,
    encoder: str = EmbedConfig.encoder,
    encoder_options: dict[str, Any] | None = None,
    fpr: float = AuditConfig.fpr,
    threshold: float | None = AuditConfig.threshold,
    k: int = AuditConfig.k,
    score: Literal["auto", "nn", "identity"] = AuditConfig.score,
    workers: int | None = EmbedConfig.workers,
    cache: str | os.PathLike[str] | bool = True,
    device: str = AuditConfig.search_device,
    config: AuditConfig | None = None,
    decisions: Decisions | str | os.PathLike[str] | None = None,
    argv: list[str] | None = None,
) -> AuditResult:
    """Which synthetic samples copy or re-identify training samples (``trainleak audit``).

    Args:
        train: training images (a path, an :class:`EmbeddingSet` or an array).
        synthetic: the samples to audit.
        holdout: real images never trained on; calibrates the threshold at ``fpr``.
        encoder: ``face``, ``pixel``, ``tiled``, ``copy``, ``onnx:FILE``, ``torchscript:FILE``.
        encoder_options: the encoder's options, e.g. ``{"aligned": True}``.
        fpr: target false-positive rate on the holdout.
        threshold: a fixed threshold when there is no holdout.
        k: training neighbours reported per sample.
        score: ``nn``, ``identity`` or ``auto``.
        workers: embedding processes (``None`` = CPU cores).
        cache: the embedding cache folder, ``True`` (default folder) or ``False``.
        device: where the neighbour search runs (``auto``, ``cpu``, ``cuda[:N]``).
        config: all settings at once, as the command line gives them; a
            keyword above that disagrees with it raises :class:`AuditInputError`.
        decisions: reviewers' decisions from ``trainleak review`` (its
            ``decisions.sqlite``, report folder or exported CSV): pairs marked
            "not a leak" are released, pairs marked "leak" flagged.
        argv: the command line, recorded in the report.

    Raises:
        AuditInputError: an input has no usable image, arrays without a
            holdout or threshold, or keywords that disagree with ``config``.

    Example:
        >>> import trainleak as tl
        >>> t = np.eye(4)[:3]
        >>> r = tl.audit(train=t, synthetic=np.eye(4)[[0, 3]], threshold=0.9)
        >>> r.verdict
        '1 of 2 synthetic samples flagged (threshold 0.9000, fixed)'
        >>> tl.audit(t, t, config=AuditConfig(threshold=0.9), threshold=0.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        trainleak.errors.AuditInputError: ... config.threshold is 0.9 but a keyword says 0.5...

    """
    config = one_way(
        config,
        AuditConfig(
            embed=keyword_config(encoder, encoder_options, workers, cache),
            fpr=fpr,
            threshold=threshold,
            k=k,
            score=score,
            search_device=device,
        ),
        AuditConfig(),
    )
    return _audit(
        _wrap(train), _wrap(synthetic), None if holdout is None else _wrap(holdout),
        config=config, argv=argv, decisions=decisions,
    )  # fmt: skip


def dedup(
    images: Source,
    *,
    encoder: str = DedupConfig().embed.encoder,
    encoder_options: dict[str, Any] | None = None,
    threshold: float | None = DedupConfig.threshold,
    workers: int | None = EmbedConfig.workers,
    cache: str | os.PathLike[str] | bool = True,
    config: DedupConfig | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Near-duplicate clusters in one set and what to keep (``trainleak dedup``).

    Args:
        images: the set (a path, an :class:`EmbeddingSet` or an array).
        encoder: ``tiled`` (default) or ``pixel`` have safe default thresholds;
            any other encoder needs ``threshold``.
        encoder_options: the encoder's options.
        threshold: similarity above which two images are near-duplicates.
        workers: embedding processes.
        cache: the embedding cache folder, ``True`` or ``False``.
        config: all settings at once; a keyword that disagrees with it is an error.
        argv: the command line, recorded in the report.

    Returns:
        A :class:`~trainleak.audits.dedup.DedupResult` (``.kept``, ``.copy_kept(dir)``).

    """
    from trainleak.audits.dedup import dedup as run

    config = one_way(
        config,
        DedupConfig(
            embed=keyword_config(encoder, encoder_options, workers, cache), threshold=threshold
        ),
        DedupConfig(),
    )
    return run(_wrap(images), config=config, argv=argv)


def extract(
    generated: str | os.PathLike[str],
    train: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    samples_per_prompt: int = ExtractConfig.samples_per_prompt,
    prompts: list[str] | None = None,
    seed: int = ExtractConfig.seed,
    steps: int | None = None,
    delta: float = ExtractConfig.delta,
    min_clique: int = ExtractConfig.min_clique,
    relative: bool = ExtractConfig.relative,
    encoder: str = ExtractConfig().embed.encoder,
    workers: int | None = EmbedConfig.workers,
    cache: str | os.PathLike[str] | bool = True,
    config: ExtractConfig | None = None,
) -> ExtractResult:
    """Training images a generator regurgitates (``trainleak extract``).

    Args:
        generated: a folder of generations (sub-folders = groups), or a
            generator, ``python:module:function`` or ``diffusers:DIR``, whose
            samples are then written to ``out`` (resumable; tied to the
            generator by a manifest).
        train: the training images.
        out: where a generator's samples go (needed with a generator).
        samples_per_prompt: samples per prompt when generating.
        prompts: text prompts of a conditional pipeline.
        seed: sampling seed.
        steps: denoising steps of a diffusers pipeline.
        delta: tiled-l2 distance that counts as near-identical.
        min_clique: smallest clique reported.
        relative: use the paper's relative criterion.
        encoder: the distance (``tiled`` = the paper's).
        workers: embedding processes.
        cache: the embedding cache folder, ``True`` or ``False``.
        config: all settings at once; a keyword that disagrees with it is an error.

    """
    from trainleak.audits.extraction import extract as run
    from trainleak.audits.generate import generate_groups
    from trainleak.generators import is_generator_spec

    config = one_way(
        config,
        ExtractConfig(
            embed=keyword_config(encoder, None, workers, cache),
            delta=delta,
            min_clique=min_clique,
            relative=relative,
            samples_per_prompt=samples_per_prompt,
            seed=seed,
        ),
        ExtractConfig(),
    )
    source: str | os.PathLike[str] = generated
    if is_generator_spec(os.fspath(generated)):
        if out is None:
            raise AuditInputError("a generator needs out=FOLDER for its samples")
        source = generate_groups(
            os.fspath(generated),
            Path(out) / "generated",
            samples_per_prompt=config.samples_per_prompt,
            seed=config.seed,
            prompts=prompts,
            steps=steps,
        )
    return run(source, train, config=config)


def membership(
    identities: str | os.PathLike[str],
    generated: str,
    reference: str | os.PathLike[str] | None = None,
    members: set[str] | None = None,
    *,
    n_samples: int = MembershipConfig.n_samples,
    top_m: int = MembershipConfig.top_m,
    encoder: str = EmbedConfig.encoder,
    encoder_options: dict[str, Any] | None = None,
    seed: int = MembershipConfig.seed,
    workers: int | None = EmbedConfig.workers,
    cache: str | os.PathLike[str] | bool = True,
    config: MembershipConfig | None = None,
    argv: list[str] | None = None,
) -> MembershipResult:
    """Was this person in the generator's training set? (Webster et al.'s identity attack).

    Args:
        identities: the people to test, one sub-folder of photos each.
        generated: a folder of generated images or a generator spec.
        reference: people known not to be in training (gives p-values).
        members: names of the members among ``identities`` (gives AUC).
        n_samples: samples drawn from a generator.
        top_m: a person's score is the mean similarity of their ``top_m`` closest samples.
        encoder: the face encoder (``face``) or another identity encoder.
        encoder_options: its options, e.g. ``{"aligned": True}``.
        seed: sampling seed.
        workers: embedding processes.
        cache: the embedding cache folder, ``True`` or ``False``.
        config: all settings at once; a keyword that disagrees with it is an error.
        argv: the command line, recorded in the report.

    For the loss attack on a diffusion model's weights use :func:`loss_membership`.

    """
    from trainleak.audits.membership import membership as run

    config = one_way(
        config,
        MembershipConfig(
            embed=keyword_config(encoder, encoder_options, workers, cache),
            n_samples=n_samples,
            top_m=top_m,
            seed=seed,
        ),
        MembershipConfig(),
    )
    return run(generated, identities, reference, members, config=config, argv=argv)
