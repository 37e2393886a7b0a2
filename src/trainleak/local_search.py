"""Search by local features: descriptor votes shortlist, geometric verification scores.

The comparison rule of encoders whose rows are packed local features
(``metric == "local"``, the ``copy`` encoder): :class:`LocalSimilarity` has
the interface of :class:`~trainleak.similarity.Similarity`, so audits,
``dedup``, ``extract`` and the gate use it without knowing.

Retrieval (:class:`~trainleak._descriptor_index.DescriptorIndex`): every
database keypoint's RootSIFT descriptor sits in one faiss index, labelled
with its image's row (exact for tiny sets, above them an inverted file of
4-bit product codes: see :mod:`trainleak._descriptor_index`). A query's
descriptors and its mirror image's each vote once for the image of each of
their ``neighbours`` nearest descriptors; the ``shortlist`` images with most
votes (at least ``min_votes``) are verified
(:func:`trainleak.encoders.copydetect.verify`, the pairs of a block of
queries on :data:`VERIFY_THREADS` threads: OpenCV's matching and RANSAC
release the GIL, and each pair's fit is deterministic on any thread), and
their scores are the verified scores. Retrieval is approximate by design (a
copy whose keypoints win no votes is missed); verification is exact. Columns
beyond the shortlist are filled with other rows at score 0.0 (no verified
evidence), so a top-k list never has holes.

Persistence: the descriptor index of a memory-mapped array (a gate index
shard, ``np.load(..., mmap_mode="r")``) is written beside its file, named by
the encoder's matching options and the shard file's size and modification
time, and read back by the next process instead of rebuilt (``index build``
writes them through :meth:`LocalSimilarity.prepare`). A folder that cannot
be written keeps the index in memory only. The gate deletes these files with
their shard (``index compact``; :func:`trainleak.gate.shards.remove_unlisted`).
Each array's index is kept in memory for as long as the array lives (at most
:data:`KEEP` arrays).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainleak._descriptor_index import CODES, EXACT_MAX, NPROBE, DescriptorIndex
from trainleak._optional import require
from trainleak.encoders.base import EncoderInfo
from trainleak.encoders.copydetect import match_score, pair_match, verify
from trainleak.encoders.keypoints import Features, unpack
from trainleak.similarity import Similarity

log = logging.getLogger(__name__)

#: Queries whose descriptors are searched at once (about 256 KB each as float32).
VOTE_BLOCK = 64
#: Descriptor indexes kept in memory (one per database array, e.g. per shard).
KEEP = 64
#: Threads verifying a block's shortlisted pairs (at most this machine's cores).
VERIFY_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

__all__ = ["NPROBE", "VERIFY_THREADS", "DescriptorIndex", "LocalSimilarity"]


@dataclass(frozen=True)
class LocalSimilarity(Similarity):
    """The ``local`` comparison rule: votes shortlist, verified inliers score.

    Example:
        >>> from skimage import data
        >>> from trainleak.encoders.copydetect import CopyEncoder
        >>> enc = CopyEncoder(max_keypoints=128)
        >>> db = np.concatenate([enc.encode(data.coffee()), enc.encode(data.astronaut())])
        >>> sim = Similarity.of(enc.info)
        >>> s, i = sim.knn(enc.encode(data.astronaut()[50:400, ::-1]), db, 2)
        >>> int(i[0, 0]), bool(s[0, 0] > 0.8), float(s[0, 1])
        (1, True, 0.0)

    """

    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _cache: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    #: The rows are not compared by a metric: exact vector searches (faiss
    #: inner product) cannot stand in for this rule.
    rescoring = True

    @classmethod
    def of_local(cls, info: EncoderInfo) -> LocalSimilarity:
        """Return the rule of one ``local`` encoder, with its matching options."""
        return cls("cosine", 1, None, dict(info.options))

    def score_of(self, query: np.ndarray, train: np.ndarray) -> float:
        """Return the verified score of one pair of packed rows."""
        return match_score(pair_match(query, train, self.options), self.options)

    def verified(self, query: Features, train: Features) -> float:
        """Return the verified score of one pair of unpacked features (:meth:`score_of`'s)."""
        opts = self.options
        match = verify(query, train, ratio=float(opts.get("ratio", 0.8)),
                       ransac_frac=float(opts.get("ransac_frac", 0.015)))  # fmt: skip
        return match_score(match, opts)

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(n_a, n_b)`` verified scores (every pair; for small sets)."""
        out = np.zeros((len(a), len(b)), np.float32)
        for i in range(len(a)):
            for j in range(len(b)):
                out[i, j] = self.score_of(a[i], b[j])
        return out

    def near_graph(self, vectors: np.ndarray, min_score: float, block: int = 1024) -> np.ndarray:
        """Boolean ``(n, n)`` graph of the pairs of ``vectors`` verified above ``min_score``.

        Not every pair is verified (about 7 ms a pair here: half an hour for
        500 images): the set's own descriptor index is built and each image
        (with its mirror image) votes, as in :meth:`knn`. Each image's
        candidates are then verified in order of votes (at least ``min_votes``)
        until ``shortlist`` in a row fail (ours): the copies of an image
        out-vote the other images, so a group of ``m`` copies gets all its
        ``m (m - 1) / 2`` edges, and a distinct image costs ``shortlist``
        verifications. A pair is verified once, the lower row as the query;
        the graph is symmetric. Near-identical images share their votes among
        each other (a pair of ``m`` copies gets about ``max_keypoints *
        neighbours / m``), so the neighbours searched grow with the set (ours:
        twice ``min_votes`` a pair, at least the encoder's ``neighbours``).
        ``block`` is unused.
        """
        n = len(vectors)
        graph = np.zeros((n, n), bool)
        if n < 2:
            return graph
        min_votes = int(self.options.get("min_votes", 4))
        patience = int(self.options.get("shortlist", 8))
        keypoints = max(1, int(self.options.get("max_keypoints", 256)))
        base = int(self.options.get("neighbours", 4))
        # +1: each descriptor's nearest neighbour is itself.
        neighbours = min(1024, max(base, -(-2 * min_votes * (n - 1) // keypoints)) + 1)
        nprobe = int(self.options.get("nprobe", NPROBE))
        feats = [unpack(r) for r in vectors]
        index = DescriptorIndex(vectors)
        verdicts: dict[tuple[int, int], bool] = {}
        for q0 in range(0, n, VOTE_BLOCK):
            part = feats[q0 : q0 + VOTE_BLOCK]
            votes = index.votes_many([[f, f.mirrored()] for f in part], neighbours, nprobe)
            for j, counts in enumerate(votes):
                i, misses = q0 + j, 0
                for r in sorted(counts, key=lambda r: (-counts[r], r)):
                    if counts[r] < min_votes or misses >= patience:
                        break
                    if r == i:
                        continue
                    pair = (min(i, r), max(i, r))
                    if pair not in verdicts:
                        near = self.verified(feats[pair[0]], feats[pair[1]]) > min_score
                        verdicts[pair] = graph[pair] = graph[pair[::-1]] = near
                    misses = 0 if verdicts[pair] else misses + 1
        return graph

    def index_for(self, database: np.ndarray) -> DescriptorIndex:
        """Return the descriptor index of ``database``: kept, read from beside it, or built."""
        key = id(database)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is database:
            return hit[1]  # type: ignore[no-any-return]
        side = self._sidecar(database)
        index = DescriptorIndex.load(side, database) if side and side.is_file() else None
        if index is None:
            index = DescriptorIndex(database)
            if side is not None:
                index.save(side)
        self._keep(database, index)
        return index

    def prepare(self, databases: list[np.ndarray]) -> None:
        """Build (and, for memory-mapped files, persist) the descriptor index of each array."""
        for db in databases:
            self.index_for(db)

    def search_state(self, database: np.ndarray) -> np.ndarray:
        """Return the descriptor index of ``database`` as bytes (``uint8``), for a search elsewhere.

        An engine that sends the queries to other processes (Ray tasks) sends
        this with the rows, so every task votes in the one index the local
        search uses (read from beside a gate shard when there is one), and no
        task rebuilds it.
        """
        faiss = require("faiss", extra="copy", needed_for="--encoder copy's descriptor index")
        return np.asarray(faiss.serialize_index(self.index_for(database).index))

    def adopt_state(self, database: np.ndarray, state: Any) -> None:
        """Keep the index that :meth:`search_state` packed as ``database``'s."""
        faiss = require("faiss", extra="copy", needed_for="--encoder copy's descriptor index")
        index = faiss.deserialize_index(np.asarray(state, np.uint8))
        self._keep(database, DescriptorIndex(database, index=index))

    def _keep(self, database: np.ndarray, index: DescriptorIndex) -> None:
        """Keep ``index`` as ``database``'s for as long as the array lives (at most KEEP)."""
        if len(self._cache) >= KEEP:
            self._cache.pop(next(iter(self._cache)))
        self._cache[id(database)] = (weakref.ref(database), index)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the rule without its kept indexes (weak references and faiss objects).

        A copy in another process gets its index from :meth:`adopt_state`, or
        builds it.
        """
        return {**self.__dict__, "_cache": {}}

    def _sidecar(self, database: np.ndarray) -> Path | None:
        name = getattr(database, "filename", None)
        if not name or not isinstance(database, np.memmap):
            return None
        path = Path(name)
        try:
            st = path.stat()
        except OSError:
            return None
        # Only a whole file (its rows after a header of at most 4 KiB): a slice
        # of a memory-map keeps the file's name but holds fewer rows.
        if not st.st_size - 4096 < database.nbytes <= st.st_size:
            return None
        matching = {k: self.options.get(k) for k in ("max_keypoints", "long_side")}
        shape = list(database.shape)
        ident = json.dumps(
            [matching, shape, st.st_size, st.st_mtime_ns, EXACT_MAX, CODES], sort_keys=True
        )
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return path.with_name(f"{path.name}.copy-{digest}.faiss")

    def knn(
        self,
        queries: np.ndarray,
        database: np.ndarray,
        k: int,
        *,
        backend: Any = "auto",
        exclude_self: bool = False,
        device: str = "cpu",
        self_offset: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` database rows of each query by verified score; ``(n, k)`` float32 / int64.

        ``backend`` and ``device`` are accepted for the common interface and
        unused (the search is faiss on the CPU, verification OpenCV).
        """
        n_db = len(database)
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        if n_db == 0 or len(queries) == 0:
            return out_s, out_i
        index = self.index_for(database)
        shortlist = int(self.options.get("shortlist", 8))
        neighbours = int(self.options.get("neighbours", 4))
        min_votes = int(self.options.get("min_votes", 4))
        nprobe = int(self.options.get("nprobe", NPROBE))
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            for q0 in range(0, len(queries), VOTE_BLOCK):  # one faiss search per block
                part = queries[q0 : q0 + VOTE_BLOCK]
                feats = [unpack(r) for r in part]
                block = index.votes_many([[f, f.mirrored()] for f in feats], neighbours, nprobe)
                ranked, checks = [], []
                for j, votes in enumerate(block):
                    votes.pop(self_offset + q0 + j if exclude_self else -1, None)
                    ranked.append(sorted(votes, key=lambda r: (-votes[r], r))[: max(shortlist, k)])
                    # Too few votes to hold a verified match above the chance floor: not fitted.
                    checks.append([r for r in ranked[j][:shortlist] if votes[r] >= min_votes])
                pairs = [(j, r) for j, check in enumerate(checks) for r in check]
                rows = [(part[j], database[r]) for j, r in pairs]
                scores = iter(pool.map(self.score_of, *zip(*rows, strict=True)) if rows else [])
                for j, check in enumerate(checks):
                    scored = [(next(scores), r) for r in check]
                    scored += [(0.0, r) for r in ranked[j] if r not in set(check)]
                    own = self_offset + q0 + j if exclude_self else -1
                    for col, (s, r) in enumerate(_filled(scored, k, n_db, own)):
                        out_s[q0 + j, col], out_i[q0 + j, col] = s, r
        return out_s, out_i


def _filled(
    scored: list[tuple[float, int]], k: int, n_db: int, own: int
) -> list[tuple[float, int]]:
    """Return the ``k`` best of ``scored``, best first, padded with unscored rows at 0.0."""
    taken = {r for _, r in scored}
    filler = (r for r in range(n_db) if r not in taken and r != own)
    while len(scored) < k:
        r = next(filler, None)
        if r is None:
            break
        scored.append((0.0, r))
    return sorted(scored, key=lambda t: (-t[0], t[1]))[:k]
