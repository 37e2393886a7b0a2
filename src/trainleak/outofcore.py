"""Out-of-core exact search: database memory-mapped, queries streamed in blocks.

For query sets that do not fit in memory, or database sets that should not be
copied into it: the database is a ``.npy`` file opened as a memory map
(:func:`open_vectors`; an index's vector shards are such files too), queries
are read from a ``.npy`` file a block at a time with plain reads
(:func:`read_blocks`), each block is searched with the exact blockwise search
(:meth:`trainleak.similarity.Similarity.knn`, which scans the database a
block of rows at a time and keeps a running top-k), and the block's top-k is
written out before the next block is read (:func:`knn_files`).

Peak resident memory is the database's pages (file-backed, shared, evictable)
plus one query block, its score block (at most
:data:`trainleak.neighbors.SCORE_BLOCK_BYTES`) and its ``(block, k)`` result;
it never grows with the number of queries (``bench/bench_outofcore.py``
measures it). Queries and results are never memory-mapped: pages of a mapped
file stay resident until evicted and would make the resident size grow with
the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from trainleak.similarity import Similarity

if TYPE_CHECKING:
    from trainleak.neighbors import Backend
    from trainleak.similarity import SearchRunner

#: Query rows searched at a time by :func:`knn_files`.
QUERY_ROWS = 8192

PathLike = str | os.PathLike[str]


def open_vectors(path: PathLike) -> np.ndarray:
    """Open a ``.npy`` file of ``(n, dim)`` float32 rows as a read-only memory map.

    Raises:
        ValueError: the file does not hold a 2-d float32 array.

    """
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(
            f"{path} holds a {vectors.dtype} array of shape {vectors.shape}: expected (n, dim) "
            "float32 rows (write them with trainleak.outofcore.write_vectors)"
        )
    return vectors


class NpyWriter:
    """Append ``(m, dim)`` blocks to a ``.npy`` file; the header gets the row count on close.

    The rows go straight to the file (never a memory map), so writing a
    large array holds one block at a time.

    Args:
        path: the file to write.
        dim: columns per row.
        dtype: the rows' type.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "v.npy"
        >>> with NpyWriter(path, 2) as out:
        ...     out.write(np.ones((3, 2), np.float32)); out.write(np.zeros((1, 2), np.float32))
        >>> np.load(path).shape
        (4, 2)

    """

    def __init__(self, path: PathLike, dim: int, dtype: np.dtype | type = np.float32) -> None:
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._fh: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._header()

    def _header(self) -> None:
        # numpy pads the header so the row count can grow without moving the data.
        header = {"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self._fh, header)

    def write(self, block: np.ndarray) -> None:
        """Append ``(m, dim)`` rows."""
        block = np.ascontiguousarray(block, self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"expected (m, {self.dim}) rows, got {block.shape}")
        self._fh.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        """Write the final row count into the header and close the file."""
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._header()
        self._fh.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_vectors(path: PathLike, blocks: Iterable[np.ndarray], dim: int) -> np.ndarray:
    """Write blocks of float32 rows to one ``.npy`` file; return it memory-mapped.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "db.npy"
        >>> write_vectors(path, [np.eye(2, dtype=np.float32)] * 3, 2).shape
        (6, 2)

    """
    with NpyWriter(path, dim) as out:
        for block in blocks:
            out.write(block)
    return open_vectors(path)


def read_blocks(path: PathLike, rows: int = QUERY_ROWS) -> Iterator[np.ndarray]:
    """Read a ``.npy`` file of ``(n, dim)`` rows ``rows`` at a time, without mapping it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "q.npy"
        >>> np.save(path, np.arange(10, dtype=np.float32).reshape(5, 2))
        >>> [b.shape for b in read_blocks(path, 2)]
        [(2, 2), (2, 2), (1, 2)]

    """
    if rows < 1:
        raise ValueError(f"rows must be 1 or more, got {rows}")
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: expected a C-ordered (n, dim) array, got shape {shape}")
        n, dim = shape
        for r0 in range(0, n, rows):
            count = min(rows, n - r0)
            block = np.fromfile(fh, dtype=dtype, count=count * dim)
            if len(block) != count * dim:
                raise ValueError(f"{path} ends after row {r0 + len(block) // dim} of {n}")
            yield block.reshape(count, dim)


def knn_blocks(
    query_blocks: Iterable[np.ndarray],
    database: np.ndarray,
    k: int,
    *,
    similarity: Similarity | None = None,
    backend: Backend = "auto",
    device: str = "cpu",
    engine: SearchRunner | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Search each block of queries against the whole database; yield its ``(scores, idx)``.

    The same exact search as :func:`trainleak.neighbors.knn` (and the same
    answers: each query's top-k does not depend on the other queries); only
    one block of queries and its results are in memory at a time.

    Args:
        query_blocks: ``(m, dim)`` blocks of query rows.
        database: ``(n_database, dim)`` rows; a memory map is read a block at a time.
        k: neighbours per query.
        similarity: the comparison rule (default: cosine).
        backend: search backend, as for :func:`trainleak.neighbors.knn`.
        device: torch device of the search.
        engine: where each block is searched (see :mod:`trainleak.engines`).

    Yields:
        Per block, ``(m, k)`` float32 scores and int64 database rows.

    Example:
        >>> db = np.eye(3, dtype=np.float32)
        >>> [i.tolist() for _, i in knn_blocks([db[:2], db[2:]], db, 1)]
        [[[0], [1]], [[2]]]

    """
    rule = similarity or Similarity()
    for block in query_blocks:
        if engine is None:
            yield rule.knn(block, database, k, backend=backend, device=device)
        else:
            yield engine.knn(rule, block, database, k, backend=backend, device=device)


def knn_files(
    queries: PathLike,
    database: PathLike,
    out: PathLike,
    k: int,
    *,
    similarity: Similarity | None = None,
    query_rows: int = QUERY_ROWS,
    backend: Backend = "auto",
    device: str = "cpu",
) -> tuple[Path, Path]:
    """Exact top-k of every row of a queries file in a database file, in bounded memory.

    Args:
        queries: ``.npy`` of ``(n_query, dim)`` float32 rows, read in blocks.
        database: ``.npy`` of ``(n_database, dim)`` float32 rows, memory-mapped.
        out: folder for ``scores.npy`` ``(n_query, k)`` float32 and
            ``idx.npy`` ``(n_query, k)`` int64, written block by block.
        k: neighbours per query.
        similarity: the comparison rule (default: cosine).
        query_rows: queries searched at a time.
        backend: search backend; ``auto`` picks one for the whole search
            (:func:`trainleak.neighbors.pick_backend` of all the queries), not per block.
        device: torch device of the search.

    Returns:
        The paths of ``scores.npy`` and ``idx.npy``.

    """
    db = open_vectors(database)
    if backend == "auto":  # chosen for the whole search, as knn chooses for all its queries
        from trainleak.neighbors import pick_backend

        n_query = np.load(queries, mmap_mode="r").shape[0]  # the header only
        backend = pick_backend(n_query, len(db), db.shape[1], device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    s_out, i_out = NpyWriter(folder / "scores.npy", k), NpyWriter(folder / "idx.npy", k, np.int64)
    with s_out, i_out:
        blocks = read_blocks(queries, query_rows)
        for scores, idx in knn_blocks(
            blocks, db, k, similarity=similarity, backend=backend, device=device
        ):
            s_out.write(scores)
            i_out.write(idx)
    return s_out.path, i_out.path
