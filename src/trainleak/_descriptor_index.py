"""The descriptor index of the ``copy`` encoder: which training images a query points to.

Every database keypoint's RootSIFT descriptor sits in one faiss index,
labelled with its image's row (:class:`DescriptorIndex`); a query's
descriptors, and its mirror image's, each vote for the rows of their
``neighbours`` nearest descriptors (:meth:`DescriptorIndex.votes_many`).
:mod:`trainleak.local_search` verifies the rows with most votes. The votes
only shortlist: a copy needs ``min_votes`` (4) of its hundreds of
descriptors to point at its source, and every score comes from the exact
geometric verification that follows, so the index may be approximate.

* Up to :data:`EXACT_MAX` descriptors (about 64 images): exact, ``IndexFlatL2``.
* Above: an inverted file (``4 sqrt(n)`` lists, ours, faiss's guidance being
  4-16 sqrt(n)) over 4-bit product codes scanned with SIMD lookups (faiss's
  "fast scan", ``PQ32x4fs``: 16 bytes a descriptor plus its 8-byte label).
  Chosen by measurement (``bench/bench_copy_votes.py``, bench/README's "Second
  speed follow-up"), 10,000 real crops, 1.45M descriptors, one thread: the
  earlier 8-bit scalar codes (136 bytes a descriptor) took 33-40 ms a query's
  vote at ``nprobe`` 6; fast-scan product codes 7-13 ms at ``nprobe`` 6 and
  10-15 ms at 16, with an index 5.5 times smaller (36 vs 199 MB), and blocked
  the same 145 of 150 edited copies and 0 of 50 distinct objects at ``nprobe``
  16 (144 at 6-12, so 16).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from trainleak._optional import require
from trainleak.encoders.keypoints import Features, unpack

log = logging.getLogger(__name__)

#: Descriptors up to which the index is exact (flat, ~64 images); above: IVF + 4-bit PQ.
EXACT_MAX = 16_384
#: The inverted file's codes (faiss factory string; part of the persisted file's name).
CODES = "PQ32x4fs"
#: Least descriptors sampled to train the inverted file ...
TRAIN_SAMPLE = 120_000
#: ... and at least this many per list (faiss warns under 39).
TRAIN_PER_LIST = 40
#: Inverted lists probed per query descriptor. A search setting, not a feature one:
#: not an encoder option (options are in the cache key, and every built index
#: would stop matching its encoder); a ``LocalSimilarity`` whose ``options``
#: hold ``nprobe`` uses that instead (the benchmark's sweep). With the 8-bit
#: scalar codes it was 6 (12 before the profile); with 4-bit product codes 6-12
#: missed one of 150 copies of the 10,000-crop speed set that 16 finds.
NPROBE = 16
#: Rows unpacked at a time while adding to the index (bounds memory).
ADD_BLOCK = 1024


def n_lists(total: int) -> int:
    """Inverted lists for ``total`` descriptors: ``4 sqrt(total)``, between 64 and 16,384.

    Example:
        >>> n_lists(1_454_784)
        4824

    """
    return int(np.clip(4 * np.sqrt(total), 64, 16_384))


class DescriptorIndex:
    """RootSIFT descriptors of a set of packed rows, labelled by row; see the module docstring.

    Args:
        rows: ``(n, dim)`` packed rows (a memory-map is read block by block).
        seed: seed of the training sample (the index is deterministic).

    """

    def __init__(self, rows: np.ndarray, seed: int = 0, *, index: Any = None) -> None:
        faiss = require("faiss", extra="copy", needed_for="--encoder copy's descriptor index")
        self.n_rows = len(rows)
        if index is not None:
            self.index = index
            return
        counts = np.asarray(rows[:, 0], np.int64) if len(rows) else np.zeros(0, np.int64)
        total = int(counts.sum())
        if total <= EXACT_MAX:
            self.index = faiss.IndexIDMap(faiss.IndexFlatL2(128))
        else:
            nlist = n_lists(total)
            ivf = faiss.index_factory(128, f"IVF{nlist},{CODES}", faiss.METRIC_L2)
            sample = min(total, max(TRAIN_SAMPLE, TRAIN_PER_LIST * nlist))
            ivf.train(self._sample(rows, counts, sample, seed))
            self.index = ivf  # nprobe is set by each search (votes_many)
        for b0 in range(0, len(rows), ADD_BLOCK):
            block = [unpack(r) for r in np.asarray(rows[b0 : b0 + ADD_BLOCK])]
            desc = [f.rootsift() for f in block]
            labels = np.concatenate(
                [np.full(len(f), b0 + j, np.int64) for j, f in enumerate(block)]
                or [np.zeros(0, np.int64)]
            )
            if len(labels):
                self.index.add_with_ids(np.ascontiguousarray(np.concatenate(desc)), labels)

    @classmethod
    def load(cls, path: Path, rows: np.ndarray) -> DescriptorIndex | None:
        """Read an index written by :meth:`save`, or ``None`` when it is unreadable."""
        faiss = require("faiss", extra="copy", needed_for="--encoder copy's descriptor index")
        try:
            index = faiss.read_index(os.fspath(path))
        except RuntimeError as err:  # faiss reports a bad file as a RuntimeError
            log.warning("descriptor index %s unreadable (%s): building it again", path, err)
            return None
        return cls(rows, index=index)

    def save(self, path: Path) -> None:
        """Write the index atomically (a temporary name, then a rename); log a failure."""
        faiss = require("faiss", extra="copy", needed_for="--encoder copy's descriptor index")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self.index, os.fspath(tmp))
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            log.info("descriptor index kept in memory only (%s: %s)", path, err)
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _sample(rows: np.ndarray, counts: np.ndarray, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(rows), size=min(len(rows), n // 64 + 1), replace=False))
        desc = np.concatenate([unpack(rows[i]).rootsift() for i in picks])
        return np.ascontiguousarray(desc[rng.permutation(len(desc))[:n]])

    def votes(self, feats: list[Features], neighbours: int) -> dict[int, int]:
        """Count votes per database row from ``feats``' descriptors (an image, its mirror)."""
        return self.votes_many([feats], neighbours)[0]

    def votes_many(
        self, queries: list[list[Features]], neighbours: int, nprobe: int = NPROBE
    ) -> list[dict[int, int]]:
        """Votes per database row of each query (its features: an image, its mirror).

        One faiss search for every query's descriptors at once: per-call
        overhead and faiss's threads are spent once per batch, not per query
        (the answers are the same as one search per query).
        """
        out: list[dict[int, int]] = [{} for _ in queries]
        descs = [[f.rootsift() for f in feats if len(f)] for feats in queries]
        sizes = [sum(len(d) for d in ds) for ds in descs]
        if not sum(sizes) or not self.index.ntotal:
            return out
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe
        k = min(neighbours, int(self.index.ntotal))
        desc = np.ascontiguousarray(np.concatenate([d for ds in descs for d in ds]))
        _, labels = self.index.search(desc, k)
        start = 0
        for q, n in enumerate(sizes):
            counts = out[q]
            for row in labels[start : start + n]:
                for r in set(row[row >= 0].tolist()):
                    counts[r] = counts.get(r, 0) + 1
            start += n
        return out
