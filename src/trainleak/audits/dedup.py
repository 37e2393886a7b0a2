"""``dedup``: near-duplicate clusters inside one set, and what to keep.

Carlini et al. 2023 found duplicated training images to be the main cause of
memorisation, and deduplicated CIFAR-10 (5,275 of 50,000 removed) before
retraining. Here two images are near-duplicates when their similarity is
above the threshold. Clusters are *stars*, never chains: the image with the
most near-duplicates is kept and every not-yet-clustered near-duplicate of it
joins its cluster; then the next, and so on. So every removed image is within
the threshold of the image kept for it; A~B, B~C never puts A and C together
unless A~C. (Connected components would: on natural data a chain of
"similar" photos merges whole classes.) The graph is built from each image's
nearest neighbours with exact blockwise search, so no all-pairs matrix is
held: a node whose k-th neighbour is still above the threshold is searched
again with twice the k until its neighbour list ends below it.

Keep rule (ours): the centre of each star is the image with the most
near-duplicates, ties broken by the higher sum of similarities to them, then
by the first path in sorted order. Singletons are kept.

The copy encoders (``pixel``, ``tiled``) have default operating points chosen
so that distinct photos are never joined (see :mod:`trainleak.encoders.pixel`).
Any other encoder measures something else: with ``face`` two photos of one
*person* are "duplicates", which is identity deduplication, not
near-duplicate removal. Those need an explicit ``threshold``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainleak.approx_search import use_search
from trainleak.archives import read_members
from trainleak.audits.inputs import embed_nonempty, make_embedder
from trainleak.config import DedupConfig
from trainleak.decoding import image_format
from trainleak.embedding import EmbeddingSet
from trainleak.engines.local import LocalEngine
from trainleak.errors import AuditInputError
from trainleak.images import SkipRecord, read_bytes
from trainleak.records import report_header
from trainleak.result import Result
from trainleak.similarity import Similarity
from trainleak.store import content_hash

if TYPE_CHECKING:
    from trainleak.encoders.base import EncoderInfo
    from trainleak.engines import Engine

log = logging.getLogger(__name__)

KEEP_RULE = "star centre: the image with the most near-duplicates (then highest total similarity)"


def dedup_mode(info: EncoderInfo) -> str:
    """Return what grouping by the default threshold means: the declared operating point.

    ``near-duplicate`` (pixel, tiled, copy: the same picture), ``identity``
    (face: the same person) or ``similarity`` (no safe default).
    """
    return info.operating_point


def duplicate_edges(
    vectors: np.ndarray,
    threshold: float,
    similarity: Similarity,
    k: int = 16,
    engine: Engine | None = None,
) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, with similarity above ``threshold``.

    The searches run on ``engine`` (``None``: here; see :mod:`trainleak.engines`).

    Example:
        >>> v = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
        >>> duplicate_edges(v, 0.9, Similarity("cosine")).tolist()
        [[0, 1]]

    """
    n = len(vectors)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    runner = engine if engine is not None else LocalEngine()
    pending = np.arange(n)
    found: list[np.ndarray] = []
    kk = min(k, n - 1)
    while len(pending):
        scores, idx = runner.knn(similarity, vectors[pending], vectors, kk + 1)
        for row, i in enumerate(pending):
            keep = (scores[row] > threshold) & (idx[row] != i) & (idx[row] >= 0)
            found.append(np.stack([np.full(keep.sum(), i), idx[row][keep]], 1))
        full = scores[:, -1] > threshold
        if kk >= n - 1 or not full.any():
            break
        pending = pending[full]
        kk = min(2 * kk, n - 1)
    edges = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    edges = np.sort(edges, axis=1)
    return np.unique(edges, axis=0) if len(edges) else edges


def star_clusters(n: int, edges: np.ndarray, weights: np.ndarray) -> list[tuple[int, list[int]]]:
    """Greedy star clustering: ``(centre, members)`` with every member adjacent to its centre.

    Args:
        n: number of nodes.
        edges: ``(e, 2)`` node pairs.
        weights: ``(e,)`` similarity of each pair (ties in degree go to the
            larger total weight, then the lower node index).

    Returns:
        Clusters of two or more nodes; ``members`` includes the centre, sorted.

    Example:
        >>> star_clusters(4, np.array([[0, 1], [1, 2], [2, 3]]), np.array([.9, .95, .9]))
        [(1, [0, 1, 2])]

    """
    neighbours: list[dict[int, float]] = [{} for _ in range(n)]
    for (a, b), w in zip(edges.reshape(-1, 2).tolist(), np.asarray(weights).tolist(), strict=True):
        neighbours[a][b] = neighbours[b][a] = w
    order = sorted(range(n), key=lambda i: (-len(neighbours[i]), -sum(neighbours[i].values()), i))
    taken = np.zeros(n, bool)
    out = []
    for centre in order:
        if taken[centre]:
            continue
        free = [j for j in neighbours[centre] if not taken[j]]
        if not free:
            continue
        members = sorted([centre, *free])
        taken[members] = True
        out.append((centre, members))
    return out


def dedup(
    path: str | os.PathLike[str] | EmbeddingSet,
    *,
    config: DedupConfig | None = None,
    argv: list[str] | None = None,
) -> DedupResult:
    """Find near-duplicate clusters in one set and choose what to keep.

    The one implementation behind :func:`trainleak.dedup` and ``trainleak
    dedup``; call it through :func:`trainleak.dedup`. ``path`` is a source of
    images or a set already embedded.

    Raises:
        AuditInputError: when nothing is readable, or an encoder other than
            ``pixel``/``tiled`` is used without a threshold.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.png"):
        ...     Image.radial_gradient("L").save(d / name)
        >>> Image.linear_gradient("L").save(d / "c.png")
        >>> cfg = DedupConfig(); cfg.embed.workers = 1; cfg.embed.no_cache = True
        >>> dedup(d, config=cfg).report["summary"]["removed"]
        1

    """
    config = config or DedupConfig()
    if isinstance(path, EmbeddingSet):
        return dedup_embeddings(path, config=config, argv=argv)
    with make_embedder(config.embed) as embedder:
        _require_threshold(embedder.info, config.threshold)  # before embedding anything
        emb = embed_nonempty(embedder, path, "input")
    return dedup_embeddings(emb, config=config, argv=argv)


def _require_threshold(info: EncoderInfo, threshold: float | None) -> str:
    mode = dedup_mode(info)
    if mode != "near-duplicate" and threshold is None:
        raise AuditInputError(
            f"dedup with --encoder {info.name} groups images by "
            f"{'person (identity dedup)' if mode == 'identity' else 'learned similarity'}, "
            "not near-duplicate pictures, and has no safe default: pass --threshold T "
            "(e.g. the face encoder's same-person point 0.93), or use --encoder pixel|tiled|copy"
        )
    return mode


def dedup_embeddings(
    emb: EmbeddingSet, *, config: DedupConfig | None = None, argv: list[str] | None = None
) -> DedupResult:
    """Deduplicate a set already embedded: the array-level core of :func:`dedup`.

    Of ``config.embed`` only the engine is used (where the search runs): the
    set's encoder decides the comparison and, for ``pixel``/``tiled``, the
    default threshold.
    """
    from trainleak.engines import engine_for

    config = config or DedupConfig()
    if len(emb) == 0:
        raise AuditInputError("the set is empty: nothing to deduplicate")
    info = emb.info
    mode = _require_threshold(info, config.threshold)
    threshold = info.default_threshold if config.threshold is None else config.threshold
    if config.search == "approx" and config.embed.engine != "local":
        raise AuditInputError(
            "--search approx runs on the local engine: leave out --engine ray, or use the exact "
            "search, which Ray shards"
        )
    sim = Similarity.of(info)
    with use_search(config.search) as searched:
        edges = duplicate_edges(emb.vectors, threshold, sim, config.k, engine_for(config.embed))
    weights = np.array(
        [float(sim.pairwise(emb.vectors[[a]], emb.vectors[[b]])[0, 0]) for a, b in edges]
    )
    clusters = _clusters(emb, star_clusters(len(emb), edges, weights), sim)
    cluster_of = {m["path"]: c["cluster"] for c in clusters for m in c["members"]}
    kept = {c["kept"] for c in clusters}
    removed = sum(c["size"] - 1 for c in clusters)
    report = {
        **report_header("dedup", argv, config.to_dict()),
        "encoder": info.to_dict(),
        "inputs": {"input": emb.counts()},
        "threshold": {
            "value": threshold,
            "method": "encoder-default" if config.threshold is None else "fixed",
            "note": info.threshold_note if config.threshold is None else "fixed by the user",
        },
        "summary": {
            "mode": mode,
            "images": len(emb),
            "clusters": len(clusters),
            "in_clusters": sum(c["size"] for c in clusters),
            "removed": removed,
            "kept": len(emb) - removed,
            "keep_rule": KEEP_RULE,
            "clustering": "stars: every removed image is above the threshold to its kept image",
        },
        "clusters": clusters,
        "rows": [
            {
                "path": ident,
                "cluster": cluster_of.get(ident),
                "kept": ident not in cluster_of or ident in kept,
            }
            for ident in emb.ids
        ],
        "skipped": [s.to_dict() for s in emb.skipped],
        "search": searched.summary(),
    }
    return DedupResult(report, emb)


def _clusters(
    emb: EmbeddingSet, stars: list[tuple[int, list[int]]], sim: Similarity
) -> list[dict[str, Any]]:
    rows = []
    for centre, members in stars:
        sims = sim.pairwise(emb.vectors[[centre]], emb.vectors[members])[0]
        ranked = sorted(zip(members, sims.tolist(), strict=True), key=lambda p: -p[1])
        rows.append((emb.ids[centre], [(emb.ids[m], s) for m, s in ranked]))
    rows.sort(key=lambda r: (-len(r[1]), r[0]))
    return [
        {
            "cluster": number,
            "size": len(members),
            "kept": kept,
            "members": [{"path": p, "similarity_to_kept": s} for p, s in members],
        }
        for number, (kept, members) in enumerate(rows)
    ]


class DedupResult(Result):
    """What :func:`dedup` found: the report dict and the embedded set."""

    def __init__(self, report: dict[str, Any], embedded: EmbeddingSet) -> None:
        super().__init__(report)
        self.embedded = embedded
        #: Kept images :meth:`copy_kept` did not write, with the reason.
        self.copy_skipped: list[SkipRecord] = []

    @property
    def verdict(self) -> str:
        """E.g. ``400 images: no near-duplicates found``."""
        s = self.report["summary"]
        if not s["clusters"]:
            return f"{s['images']} images: no near-duplicates found"
        kind = "identity clusters" if s["mode"] == "identity" else "near-duplicate clusters"
        return f"{s['images']} images, {s['clusters']} {kind}: remove {s['removed']}"

    @property
    def kept(self) -> list[str]:
        """Paths to keep (cluster medoids and singletons), sorted."""
        return sorted(r["path"] for r in self.report["rows"] if r["kept"])

    def copy_kept(self, dest: str | os.PathLike[str]) -> int:
        """Copy the kept images to ``dest``, keeping their paths relative to the input.

        Paths are taken relative to the input folder, or, for a list file or
        a glob, to the deepest folder holding every kept file, so files that
        share a name in different folders never overwrite each other. A
        member of a tar shard or a parquet file becomes a file named by its
        id, with the suffix of its image format. Each copy is checked against
        its source's content hash.

        Every written path resolves inside ``dest``: a kept id that would lead
        out of it (``..``, an absolute name, a symlink already in ``dest``) is
        not written and becomes a skip record in :attr:`copy_skipped`.

        Returns:
            The number of files written (each verified).

        Raises:
            AuditInputError: ``dest`` is inside the input (the copies would
                join the set they came from), or a copy does not match its source.

        """
        dest = Path(dest)
        kept = set(self.kept)
        pairs = zip(self.embedded.ids, self.embedded.paths, strict=True)
        sources = sorted({Path(p) for i, p in pairs if i in kept})
        root = Path(self.embedded.root)
        parents = [str(s.parent) for s in sources] or ["."]
        base = root if root.is_dir() else Path(os.path.commonpath(parents))
        if _inside(dest.resolve(), base.resolve()):
            raise AuditInputError(
                f"--copy-kept {dest} is inside the input {base}: the copies would mix with the "
                "images they came from; choose a folder outside it"
            )
        # Members of tar shards and parquet files are written out as image files.
        members = read_members(str(s) for s in sources if not s.exists())
        written: set[Path] = set()
        self.copy_skipped = []
        inside = dest.resolve()
        for src in sources:
            rel = src.relative_to(base) if _inside(src, base) else Path(src.name)
            data = members.get(str(src))
            if data is not None:
                rel = rel.with_name(rel.name + _suffix(data))
            target = dest / rel
            n = 1
            while target in written:  # only for sources outside base (symlinked from elsewhere)
                target = dest / rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
                n += 1
            why = _outside(target, inside)
            if why is not None:
                log.warning("--copy-kept: %s not copied: %s", src, why)
                self.copy_skipped.append(SkipRecord("copy-kept", str(src), why))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                shutil.copy2(src, target)
                data = read_bytes(src)
            else:
                target.write_bytes(data)
            if content_hash(read_bytes(target)) != content_hash(data):
                raise AuditInputError(f"copy of {src} to {target} does not match its source")
            written.add(target)
        return len(written)


def _suffix(data: bytes) -> str:
    """Return a file suffix for image bytes, from their content (``.jpg``, ``.png``...)."""
    fmt = (image_format(data) or "").lower()
    return {"jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}" if fmt else "")


def _outside(target: Path, dest: Path) -> str | None:
    """Why ``target`` may not be written under ``dest`` (resolved), or ``None`` when it may.

    Resolving follows ``..`` and symlinks already in the destination, so a
    name or a link that leads out of it is caught before anything is written.
    """
    if "\x00" in str(target):
        return "unsafe file name: holds a NUL byte"
    if not _inside(target.resolve(), dest) or target.resolve() == dest:
        return f"unsafe file name: {str(target)!r} would be written outside {str(dest)!r}"
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
