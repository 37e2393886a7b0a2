"""One source of defaults, shared by the Python API and the command line.

Every ``*Config`` of trainleak lives here, and the CLI reads its option
defaults from these fields (``tests/test_cli_defaults.py`` checks that none
is repeated as a literal). The CLI imports this module at start-up, so it
imports only ``dataclasses`` and ``typing``: nothing numeric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: Default decompression-bomb limit: 100 megapixels (a 10000 x 10000 image).
DEFAULT_MAX_PIXELS = 100_000_000
#: Default cap on one input file's size, in megabytes: larger files are skipped
#: before they are read (a 6 GB sparse file named ``x.png`` must not be read whole).
DEFAULT_MAX_FILE_MB = 256

ScoreMode = Literal["auto", "nn", "identity"]
SearchBackend = Literal["auto", "torch", "numpy", "faiss"]
#: ``exact`` neighbours, or ``approx``: a faiss inverted-file index with the
#: candidates re-scored exactly and the recall measured in every run
#: (:mod:`trainleak.approx_search`).
SearchMode = Literal["exact", "approx"]
#: The headline score of identity membership.
Headline = Literal["max", "topm"]
#: How ``invert`` rebuilds inputs from features.
InvertMethod = Literal["optimize", "dci", "decoder"]
#: Where the embedding stage and the search run (see :mod:`trainleak.engines`).
EngineName = Literal["local", "ray"]
#: Which search answers ``check``: faiss when it can, the exact search, or faiss only.
IndexSearch = Literal["auto", "exact", "faiss"]
#: The file ``audit`` writes its full neighbour table to: parquet when pyarrow
#: is installed (``auto``), or CSV.
TableFormat = Literal["auto", "parquet", "csv"]

#: Options that make the ``tiled`` encoder Carlini et al.'s tiled l2 exactly.
PAPER_TILED: dict[str, Any] = {"flip_invariant": False, "normalise": False, "blur": 0.0}


@dataclass
class EmbedConfig:
    """How inputs are embedded; every audit has one.

    ``engine`` says where the embedding stage and the neighbour search run:
    ``local`` (this machine) or ``ray`` (a Ray cluster at ``ray_address``:
    ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; ``None`` starts one
    here); see :mod:`trainleak.engines`. On Ray, ``workers`` is the number of
    encoder actors (``None``: one per GPU of the cluster for an encoder on a
    GPU, else one per CPU).
    """

    encoder: str = "face"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    batch_size: int = 16
    cache: str | None = None
    no_cache: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    identity_depth: int = 1
    progress: bool = False
    engine: EngineName = "local"
    ray_address: str | None = None

    def cache_arg(self) -> str | bool:
        """Return the ``cache`` argument of :func:`trainleak.embed`."""
        if self.no_cache:
            return False
        return self.cache if self.cache else True


@dataclass
class AuditConfig:
    """Settings of ``audit``; the resolved values are written into the report.

    Attributes:
        fpr: target false-positive rate when calibrating on a holdout. 0.001
            by default; a holdout needs 1,000+ samples to resolve it.
        threshold: a fixed threshold, used when no holdout is given.
        k: training neighbours reported per synthetic sample.
        score: ``nn`` = similarity to the nearest training sample; ``identity``
            = best over training identities of the mean of (nearest photo of
            the identity) and (identity's mean embedding); ``auto`` = identity
            when every training sample has an identity label, else nn.
        identity_weight: weight of the nearest photo in the identity score.
        ct_cells: k-means cells for Meehan's C_T.
        seed: seeds the k-means of C_T (the only randomness in an audit).
        search_backend: neighbour search, see :func:`trainleak.neighbors.knn`.
        search: ``exact`` or ``approx`` (cosine encoders; recall measured
            and reported, the holdout searched the same way).
        search_device: where the search runs: ``auto`` (a CUDA GPU when torch
            sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Results
            do not depend on it (chosen pairs are re-scored in float64).
        report_samples: how many synthetic samples ``report.json`` lists with
            their neighbours: the flagged ones first, then the highest
            scores (plus any a reviewer decided). Holdout rows are capped the
            same way. The full table of every sample's top k goes to
            ``matches.parquet`` or ``matches.csv`` (see ``table``), so
            ``report.json`` and ``report.html`` stay a few MB at any size.
        table: the full neighbour table's format: ``parquet`` (needs
            pyarrow), ``csv``, or ``auto`` (parquet when pyarrow is installed).

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    fpr: float = 0.001
    threshold: float | None = None
    k: int = 5
    score: ScoreMode = "auto"
    identity_weight: float = 0.5
    ct_cells: int = 5
    seed: int = 0
    search_backend: SearchBackend = "auto"
    search: SearchMode = "exact"
    search_device: str = "auto"
    report_samples: int = 1000
    table: TableFormat = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


#: ``index add``: the largest change of a calibrated threshold committed without
#: ``--accept-threshold-change`` (absolute; recalibrating on new training rows
#: can silently release what the old threshold blocked).
MAX_THRESHOLD_CHANGE = 0.01


@dataclass
class IndexConfig:
    """Settings of ``index build``; the resolved values are written into the manifest.

    The threshold is chosen as ``audit`` chooses it, so an index answers as
    ``audit`` would for the same training set, holdout and settings.

    Attributes:
        embed: how training (and holdout) images are embedded; the encoder and
            its options become the index's encoder.
        fpr: target false-positive rate when calibrating on a holdout.
        threshold: a fixed threshold, used when no holdout is given.
        score: ``nn``, ``identity`` or ``auto``, as in :class:`AuditConfig`.
        identity_weight: weight of the nearest photo in the identity score.
        shard_rows: rows per vector shard file.
        search: how the holdout is searched to calibrate the threshold
            (``exact``, or ``approx`` with measured recall); see :class:`AuditConfig`.

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    fpr: float = 0.001
    threshold: float | None = None
    score: ScoreMode = "auto"
    identity_weight: float = 0.5
    shard_rows: int = 1_000_000
    search: SearchMode = "exact"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``manifest.json``."""
        return asdict(self)


@dataclass
class CheckConfig:
    """Settings of ``check`` and of an opened index.

    Attributes:
        embed: workers, batch size, cache and limits for embedding the images
            checked; the encoder and its options always come from the index.
        batch: images read and embedded at a time (memory is bounded by it).
        k: neighbours searched per image (the verdict uses the nearest).
        search: ``auto`` = faiss when installed, the encoder is cosine without
            a mirror rule and the live vectors fit ``faiss_max_bytes``; else
            the exact search over the memory-mapped shards. Both give the same
            verdicts.
        search_backend: backend of the exact search (see :func:`trainleak.knn`).
        faiss_max_bytes: largest index copied into faiss's memory under ``auto``.
        decisions: reviewers' decisions to honour on top of the index's own
            (``IDX/decisions.sqlite``): a ``decisions.sqlite``, the report
            folder holding one, or a ``review --export`` CSV (see
            :mod:`trainleak.gate.reviewed`).

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    batch: int = 256
    k: int = 5
    search: IndexSearch = "auto"
    search_backend: SearchBackend = "auto"
    faiss_max_bytes: int = 4 * 2**30
    decisions: str | None = None


def _serve_check() -> CheckConfig:
    # Uploads are other people's photos: their embeddings are not cached on disk
    # unless the operator names a cache folder.
    return CheckConfig(embed=EmbedConfig(no_cache=True))


@dataclass
class ServeConfig:
    """Settings of ``serve``, the HTTP service over an index.

    Attributes:
        check: search and embedding settings of the opened index (no
            embedding cache by default: uploads are not kept).
        host: address to bind; loopback unless a token is set.
        port: TCP port.
        max_upload_mb: request body limit, counted while the body streams in.
        rate_limit: requests per second per token (or per address without
            auth), as a token bucket with one second of burst; 0 = off.
        max_batch: images embedded together by the micro-batcher.
        max_wait_ms: how long the batcher waits for more requests to fill a batch.
        queue_size: requests waiting for the encoder; more are answered 503.
        queue_mb: megabytes of uploads waiting for the encoder; more are answered 503.
        request_timeout: seconds a request waits for its verdicts (503 after).
        header_timeout: seconds a request's headers may take to arrive, from
            the connection's opening; a slower request is answered 408 and
            closed (a client trickling headers cannot hold a connection).
        body_timeout: seconds a request's body may take to arrive after its
            headers (408 and close after): 30 s is 20 MB at 0.7 MB/s.
        max_requests: requests answered at once; more are answered 503.
            Connections still sending their headers are not counted.
        max_connections: open connections; past it the oldest connection not
            being answered (sending headers, idle, or done) is closed.
        decode_mpix: megapixels decoded at once: a micro-batch holds uploads
            of at most this many pixels in all (one larger image runs alone),
            so concurrent large images cost one image's memory at a time.
        graceful_timeout: seconds a shutdown waits for requests in flight.
        access_log: log every request (with the client's address) on stderr.

    """

    check: CheckConfig = field(default_factory=_serve_check)
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0
    rate_limit: float = 0.0
    max_batch: int = 32
    max_wait_ms: float = 2.0
    queue_size: int = 64
    queue_mb: float = 256.0
    request_timeout: float = 60.0
    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_requests: int = 256
    max_connections: int = 512
    decode_mpix: float = 100.0
    graceful_timeout: float = 30.0
    access_log: bool = False


@dataclass
class DedupConfig:
    """Settings of ``dedup``.

    Attributes:
        embed: how images are embedded (default encoder ``tiled``).
        threshold: similarity above which two images are near-duplicates;
            ``None`` = the encoder's default operating point (copy encoders
            only; any other encoder needs one).
        k: neighbours searched per image at first.
        search: ``exact``, or ``approx`` for cosine encoders (recall measured
            and reported; the tiled and pixel rules stay exact).

    """

    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(encoder="tiled"))
    threshold: float | None = None
    k: int = 16
    search: SearchMode = "exact"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


@dataclass
class ExtractConfig:
    """Settings of ``extract``; the paper's values are the defaults.

    Carlini et al. 2023: 500 generations per prompt, cliques of at least 10,
    delta = 0.15 with the tiled l2 distance, and for small images the relative
    criterion ``d / mean(d to 50 nearest) < 0.5`` (see
    :mod:`trainleak.audits.extraction`).

    Attributes:
        embed: how images are embedded (default encoder ``tiled``, made the
            paper's raw tiled l2 with :data:`PAPER_TILED` unless options say
            otherwise).
        delta: distance below which two images are near-identical.
        min_clique: generations a clique needs to count.
        relative: use the relative criterion instead of ``delta`` alone.
        alpha: threshold of the relative criterion.
        relative_n: nearest training images averaged by the relative criterion.
        samples_per_prompt: generations per prompt when a generator is given.
        seed: seeds generation.

    """

    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(encoder="tiled"))
    delta: float = 0.15
    min_clique: int = 10
    relative: bool = False
    alpha: float = 0.5
    relative_n: int = 50
    samples_per_prompt: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        # The paper's tiled l2: raw pixels, no smoothing, not mirror-blind (the
        # audit's ``tiled`` is all three by default); options given win.
        if self.embed.encoder == "tiled":
            for name, value in PAPER_TILED.items():
                self.embed.encoder_options.setdefault(name, value)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


@dataclass
class MembershipConfig:
    """Settings of identity ``membership``; the resolved values go into the report.

    Attributes:
        embed: how photos and generated samples are embedded.
        n_samples: generated samples when ``generated`` is a generator.
        seed: seeds generation (sample ``i`` depends on ``(seed, i)`` only)
            and the bootstrap.
        gen_batch_size: samples generated and embedded at a time.
        steps: denoising steps of a ``diffusers:`` generator (its default when None).
        top_m: nearest generated samples averaged by the ``topm`` score.
        score: the headline score, ``max`` (default) or ``topm``. ``max``
            because a person a generator memorised may appear in one sample
            among many: ``topm`` averages that sample with strangers' and
            misses them (tests/audits/test_membership_default.py).
        n_boot: bootstrap replicates of the evaluation intervals.

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    n_samples: int = 1000
    seed: int = 0
    gen_batch_size: int = 32
    steps: int | None = None
    top_m: int = 5
    score: Headline = "max"
    n_boot: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


@dataclass
class LossConfig:
    """Settings of the loss attack; the resolved values go into the report.

    Attributes:
        timesteps: noise levels at which the denoising loss is measured.
        noise_seeds: noise draws per timestep, the same for every image.
        seed: seeds the draws and the bootstrap.
        batch_size: images per forward pass.
        n_boot: bootstrap replicates of the evaluation intervals.
        threads: torch CPU threads (``None``: torch's default).
        extra: free-form settings recorded in the report.

    """

    timesteps: tuple[int, ...] = (25, 50, 100, 200)
    noise_seeds: int = 8
    seed: int = 0
    batch_size: int = 64
    n_boot: int = 1000
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class InvertConfig:
    """Settings of ``invert``; the resolved values go into the report.

    Attributes:
        method: ``optimize``, ``dci`` or ``decoder``.
        steps: optimisation steps (``optimize``), training steps
            (``decoder``), or for ``dci`` the training steps of each block
            inverse and of the end-to-end refinement (each block's own
            refinement takes half as many).
        seed: seeds every random choice.
        size: model input ``(height, width)``; ``None`` = first image's size.
        mean: normalisation mean of pixels in [0, 1].
        std: normalisation divisor.
        defense: ``noise:SIGMA`` or ``quantize:BITS``, or ``None``.
        batch_size: images inverted together.
        identity: measure identity similarity with the ``face`` encoder.
        max_pixels: decompression-bomb limit.
        dci_inputs: what ``dci`` trains its block inverses on: ``noise``
            (multi-scale random images) or ``generator`` (a generator
            fitted to the batch-norm statistics, as in the paper).
        dci_gen_steps: training steps of that generator.
        device: where the model runs and the inversion is optimised: ``auto``
            (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda``
            or ``cuda:N``.

    """

    method: InvertMethod = "optimize"
    steps: int = 200
    seed: int = 0
    size: tuple[int, int] | None = None
    mean: float = 0.5
    std: float = 0.5
    defense: str | None = None
    batch_size: int = 64
    identity: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    dci_inputs: Literal["noise", "generator"] = "noise"
    dci_gen_steps: int = 300
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


@dataclass
class ReviewConfig:
    """Settings of ``review``, the browser page where a person judges candidates.

    Attributes:
        host: address to bind; loopback unless a token is set.
        port: TCP port.
        reviewer: name recorded with each decision; ``None`` = the login name.
        image_size: longest side, in pixels, of the images the page is sent.
        max_file_mb: image files larger than this are not read (nor shown).
        max_pixels: decompression-bomb limit for the images shown.
        max_body_kb: largest request body (a decision and its note).
        header_timeout: seconds a request's headers may take (408 after).
        body_timeout: seconds a request's body may take after its headers.

    """

    host: str = "127.0.0.1"
    port: int = 8765
    reviewer: str | None = None
    image_size: int = 512
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_kb: int = 16
    header_timeout: float = 5.0
    body_timeout: float = 10.0


@dataclass(frozen=True)
class DDPMConfig:
    """Settings of :func:`trainleak.ddpm.train_ddpm`; its module docstring gives their sources."""

    size: int = 32
    grey: bool = True
    channels: tuple[int, ...] = (16, 32, 64)
    attention: bool = False
    layers_per_block: int = 1
    train_timesteps: int = 1000
    sample_steps: int = 50
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    hflip: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


#: What ``evidence`` compares between owners: the best match, or matches above the threshold.
EvidenceStatistic = Literal["max", "count"]


@dataclass
class EvidenceConfig:
    """Settings of ``evidence`` (one owner: "was my data used?"); written into the packet.

    Attributes:
        embed: how the owner's, the reference owners' and the searched images are embedded.
        statistic: ``max`` (default) = an owner's best match score against the
            searched images; ``count`` = how many searched images match the
            owner at or above ``threshold``. ``max`` because one image seen in
            training can surface once among many samples; a count needs several.
        threshold: the match threshold of ``count`` and of the listed pairs
            (``None``: the encoder's declared default).
        alpha: the significance level of the verdict.
        copy_threshold: pixel-level similarity at or above which a matched
            pair is a near-copy rather than a look-alike (``None``: the
            ``pixel`` encoder's declared copy threshold).
        pairs: matched pairs listed in the packet, best first.
        n_samples: samples drawn when ``against`` is a generator.
        seed: seeds generation (sample ``i`` depends on ``(seed, i)`` only).
        gen_batch_size: samples generated and embedded at a time.
        steps: denoising steps of a ``diffusers:`` generator (its default when None).

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    statistic: EvidenceStatistic = "max"
    threshold: float | None = None
    alpha: float = 0.05
    copy_threshold: float | None = None
    pairs: int = 20
    n_samples: int = 1000
    seed: int = 0
    gen_batch_size: int = 32
    steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into the evidence packet."""
        return asdict(self)
