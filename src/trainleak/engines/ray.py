"""The Ray engine: the embedding stage and the exact search on a Ray cluster.

``--engine ray`` (``pip install 'trainleak[ray]'``), with ``--ray-address``:
``auto`` joins the cluster this machine belongs to, ``HOST:PORT`` a cluster's
head node, ``ray://HOST:PORT`` goes through Ray Client; without an address a
Ray instance is started on this machine (or ``RAY_ADDRESS`` is used). Every
node needs the same trainleak installed.

**Embedding.** The driver lists the source (:func:`trainleak.images.list_records`:
files, and shards as single records) and hands it to Ray Data: tasks read each
record (a shard member by member, streamed) and hash the bytes; inputs whose
hash the store holds go no further; the others are decoded and embedded by an
actor pool (``map_batches`` with :class:`~trainleak.engines.ray_stages.EncodeActor`,
one encoder per actor; ``num_gpus=1`` per actor on a cluster with GPUs when the
encoder runs on a GPU, ``-O device=cuda``, else one CPU per actor). The
vectors come back to the driver, which writes them into the same
content-hash store the local engine uses and assembles the set with the same
code, so a Ray run and a local run share the cache (a warm local re-run after
a Ray run embeds nothing) and give the same :class:`~trainleak.embedding.EmbeddingSet`.
The store is the driver's: it is the only process that writes it.

**Search.** The database is cut into shards (:func:`shard_rows`) put once in
the object store; each block of queries is searched against every shard in
its own task (:func:`~trainleak.engines.ray_stages.search_shard`, the local
exact search) and the shards' top-k lists are merged by score, then lower
row. Every chosen pair is re-scored in float64 by the local search, so scores
are the same to the bit; "auto" is resolved to one backend for the whole
search, as the local engine resolves it. A rule that re-scores its own
shortlist (the ``copy`` encoder's local features: votes in one descriptor
index of the whole database, then verification) is split by queries instead:
every task gets the whole database and the index the driver built once.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainleak._optional import require
from trainleak.engines import ray_stages as stages
from trainleak.errors import EngineError
from trainleak.images import Record, SkipRecord, list_records
from trainleak.neighbors import merge_topk, pick_backend

if TYPE_CHECKING:
    from trainleak.embedding import Embedder, EmbeddingSet
    from trainleak.neighbors import Backend
    from trainleak.similarity import Similarity

log = logging.getLogger(__name__)

#: Query rows sent to the cluster at a time (bounds the driver's and each task's memory).
QUERY_ROWS = 65536
#: Largest database shard, in bytes of float32 vectors.
SHARD_BYTES = 256 * 2**20
#: Shards per CPU of the cluster, so that every CPU has work.
SHARDS_PER_CPU = 2


def shard_rows(n_database: int, dim: int, cpus: int) -> int:
    """Rows per database shard: every CPU gets work, no shard exceeds :data:`SHARD_BYTES`.

    Above 2,048 rows (the local search's block) a shard is a whole number of
    blocks, so a shard's blocks are the blocks the local search scores.

    Example:
        >>> shard_rows(200, 1024, 2), shard_rows(10**6, 128, 4)
        (50, 126976)

    """
    rows = math.ceil(n_database / max(1, cpus * SHARDS_PER_CPU))
    rows = min(rows, max(1, SHARD_BYTES // (4 * dim)))
    return rows if rows <= 2048 else math.ceil(rows / 2048) * 2048


class RayEngine:
    """Runs the embedding stage and the search on Ray; see the module docstring.

    Args:
        address: the cluster; ``None`` starts (or reuses) one on this machine.
        actors: encoder actors; ``None``: one per GPU of the cluster for an
            encoder on a GPU, else one per CPU.
        shards: database rows per search shard; ``None``: :func:`shard_rows`.

    """

    name = "ray"

    def __init__(
        self, address: str | None = None, *, actors: int | None = None, shards: int | None = None
    ) -> None:
        self.address = address
        self.actors = actors
        self.shards = shards

    def connect(self) -> Any:
        """Return the ``ray`` module, connected to the cluster (started if need be)."""
        ray = require("ray", extra="ray", needed_for="--engine ray")
        if not ray.is_initialized():
            local = self.address is None and not os.environ.get("RAY_ADDRESS")
            log.info("connecting to Ray (%s)", self.address or "a new local instance")
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False if local else None,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise EngineError(
                    f"cannot reach the Ray cluster at {self.address!r} ({err}); start one with "
                    "'ray start --head' on its head node, give its HOST:PORT with "
                    "--ray-address, or leave --ray-address out to start Ray on this machine"
                ) from err
        return ray

    def resources(self) -> tuple[int, int]:
        """``(CPUs, GPUs)`` of the cluster."""
        total = self.connect().cluster_resources()
        return max(1, int(total.get("CPU", 1))), int(total.get("GPU", 0))

    def embed(
        self, embedder: Embedder, source: str | os.PathLike[str], set_name: str
    ) -> EmbeddingSet:
        """Embed one source on the cluster with ``embedder``'s encoder, store and limits."""
        from trainleak.embedding import assemble

        ray = self.connect()
        rd = require("ray.data", extra="ray", needed_for="--engine ray")
        ctx = rd.DataContext.get_current()
        ctx.enable_progress_bars = embedder.progress
        ctx.print_on_execution_start = False
        records = list_records(source, embedder.identity_depth)
        skipped = [
            SkipRecord(set_name, repeat, f"duplicate entry: the same file as {kept}")
            for repeat, kept in records.duplicates
        ]
        inputs: list[Record] = []
        digests: list[str | None] = []
        results: dict[str, np.ndarray | str] = {}
        pending: dict[str, np.ndarray | str] = {}
        if records:
            for row in self._rows(ray, rd, embedder, records):
                rec, digest, value, fresh = self._collect(embedder, records, row)
                inputs.append(rec)
                digests.append(digest)
                if digest is None:
                    skipped.append(SkipRecord(set_name, rec.id, str(row["reason"]) or "unreadable"))
                elif digest not in results:
                    results[digest] = value
                    if fresh and not (isinstance(value, str) and value.startswith("!")):
                        pending[digest] = value
                if len(pending) >= embedder.batch_size:
                    embedder.store.put(pending)
                    pending = {}
        embedder.store.put(pending)
        order = sorted(range(len(inputs)), key=lambda j: inputs[j].id)
        emb = assemble(
            [inputs[j] for j in order], [digests[j] for j in order],
            results, skipped, set_name, embedder.info, os.fspath(source),
        )  # fmt: skip
        emb.files += len(records.duplicates)
        return emb

    def _rows(self, ray: Any, rd: Any, embedder: Embedder, records: list[Record]) -> Any:
        """Run the read and embed stages; yield their output rows as they finish."""
        from trainleak.encoders import encoder_factory

        module = encoder_factory(embedder.spec.partition(":")[0]).__module__
        if module == "__main__":
            raise EngineError(
                f"encoder {embedder.spec!r} is defined in __main__, which Ray workers cannot "
                "import: move it to an importable module, or use --engine local"
            )
        cpus, gpus = self.resources()
        # A GPU per actor for an encoder that runs on one (-O device=cuda); Ray
        # shows each actor its own GPU as cuda:0. CPU encoders get a CPU each.
        on_gpu = bool(gpus) and embedder.local.device != "cpu"
        actors = self.actors or (gpus if on_gpu else cpus)
        options = {**embedder.options, "device": "cuda"} if on_gpu else embedder.options
        known = np.array(sorted(embedder.store.keys()), dtype="S32")
        listed = rd.from_items(
            [stages.record_row(n, rec) for n, rec in enumerate(records)],
            override_num_blocks=min(len(records), 4 * cpus),
        )
        # Reading is light next to embedding; it must not wait for a CPU the
        # actors hold, so it reserves none and is bounded by a task count.
        read = listed.flat_map(
            stages.read_rows,
            fn_kwargs={"max_file_mb": embedder.max_file_mb, "known": known},
            num_cpus=0,
            compute=rd.TaskPoolStrategy(size=cpus),
        )
        embedded = read.map_batches(
            stages.EncodeActor,
            fn_constructor_kwargs={
                "spec": embedder.spec,
                "options": options,
                "modules": [] if module.startswith("trainleak.") else [module],
                "max_pixels": embedder.max_pixels,
            },
            batch_size=embedder.batch_size,
            batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=1 if on_gpu else 0,
        )
        for batch in embedded.iter_batches(batch_size=embedder.batch_size, batch_format="numpy"):
            for j in range(len(batch["n"])):
                yield {key: column[j] for key, column in batch.items()}

    @staticmethod
    def _collect(
        embedder: Embedder, records: list[Record], row: dict[str, Any]
    ) -> tuple[Record, str | None, np.ndarray | str, bool]:
        """One output row -> its record, digest, rows or skip reason, and whether it is new."""
        if row["member"]:
            ident = stages.unpack(row["id"])
            assert ident is not None
            rec = Record(ident, Path(ident), stages.unpack(row["label"]))
        else:
            rec = records[int(row["n"])]
        digest = str(row["digest"]) or None
        if digest is None:
            return rec, None, "", False
        if row["hit"]:
            cached = embedder.store.get(digest)
            assert cached is not None  # the store only grows during a run
            return rec, digest, cached, False
        if row["result"]:
            return rec, digest, str(row["result"]), True
        rows = np.frombuffer(bytes(row["vectors"]), np.float32).reshape(-1, embedder.info.dim)
        return rec, digest, rows.copy(), True

    def knn(
        self,
        similarity: Similarity,
        queries: np.ndarray,
        database: np.ndarray,
        k: int,
        *,
        backend: Backend = "auto",
        exclude_self: bool = False,
        device: str = "cpu",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k, the database sharded over the cluster; see the module docstring.

        ``device`` is where the driver would search; on the cluster each task
        searches on a GPU when the cluster has GPUs, else on its CPU.
        """
        n, m = len(queries), len(database)
        if n == 0 or m == 0:
            return similarity.knn(queries, database, k, backend=backend, exclude_self=exclude_self)
        ray = self.connect()
        cpus, gpus = self.resources()
        if similarity.rescoring:
            return self._knn_by_queries(ray, similarity, queries, database, k, exclude_self, cpus)
        # Each task takes a GPU where the cluster has them and searches on it
        # if its torch sees CUDA ("auto"); the answers do not depend on where.
        where = "auto" if gpus else "cpu"
        if backend == "auto":
            backend = pick_backend(n, m, queries.shape[1], "cuda" if gpus else "cpu")
        rows = self.shards or shard_rows(m, database.shape[1], cpus)
        task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(stages.search_shard)
        shards = [
            (s0, ray.put(np.ascontiguousarray(database[s0 : s0 + rows], np.float32)))
            for s0 in range(0, m, rows)
        ]
        log.debug("ray knn: %d queries x %d rows in %d shards", n, m, len(shards))
        scores = np.full((n, k), -np.inf, np.float32)
        idx = np.full((n, k), -1, np.int64)
        for q0 in range(0, n, QUERY_ROWS):
            block = ray.put(np.ascontiguousarray(queries[q0 : q0 + QUERY_ROWS], np.float32))
            own = q0 if exclude_self else None
            parts = ray.get(
                [task.remote(similarity, block, s, k, s0, backend, where, own) for s0, s in shards]
            )
            s, i = merge_topk(np.concatenate([p[0] for p in parts], 1),
                              np.concatenate([p[1] for p in parts], 1), k)  # fmt: skip
            scores[q0 : q0 + len(s)], idx[q0 : q0 + len(s)] = s, i
        return scores, idx

    @staticmethod
    def _knn_by_queries(
        ray: Any,
        similarity: Similarity,
        queries: np.ndarray,
        database: np.ndarray,
        k: int,
        exclude_self: bool,
        cpus: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of a re-scoring rule (local features): the queries are cut, not the database.

        Such a rule shortlists by votes in an index of its whole database;
        each database shard would shortlist its own candidates, and the merged
        lists would not be the local engine's. So every task searches the whole
        database for a block of queries, with the one index built (or read from
        beside a gate shard) here and put in the object store once.
        """
        n = len(queries)
        rows = min(QUERY_ROWS, math.ceil(n / (cpus * SHARDS_PER_CPU)))
        db = ray.put(np.ascontiguousarray(database, np.float32))
        state = ray.put(similarity.search_state(database))
        task = ray.remote(num_cpus=1)(stages.search_queries)
        log.debug("ray knn (re-scoring): %d queries, blocks of %d", n, rows)
        parts = ray.get([
            task.remote(similarity, np.ascontiguousarray(queries[q0 : q0 + rows], np.float32),
                        db, state, k, q0 if exclude_self else None)
            for q0 in range(0, n, rows)
        ])  # fmt: skip
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
