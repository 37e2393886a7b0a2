"""The local engine: everything on this machine, the default.

The embedding stage runs in :class:`~trainleak.embedding.Embedder` itself
(inputs read and hashed in this process, misses embedded by its worker
processes); the search is :func:`trainleak.neighbors.knn`, blockwise, in this
process, on the CPU or a GPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainleak.embedding import Embedder, EmbeddingSet
    from trainleak.neighbors import Backend
    from trainleak.similarity import Similarity


class LocalEngine:
    """Runs every stage here; see the module docstring.

    Example:
        >>> from trainleak.similarity import Similarity
        >>> db = np.eye(3, dtype=np.float32)
        >>> s, i = LocalEngine().knn(Similarity(), db[:1], db, 2)
        >>> i.tolist()
        [[0, 1]]

    """

    name = "local"

    def embed(
        self, embedder: Embedder, source: str | os.PathLike[str], set_name: str
    ) -> EmbeddingSet:
        """Embed with the embedder's own worker processes."""
        if embedder.engine is not None and embedder.engine.name != self.name:
            raise ValueError(f"this embedder runs on the {embedder.engine.name} engine")
        return embedder.embed(source, set_name)

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
        """Search here, blockwise (see :func:`trainleak.neighbors.knn`)."""
        return similarity.knn(
            queries, database, k, backend=backend, exclude_self=exclude_self, device=device
        )
