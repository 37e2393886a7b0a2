"""Engines: where the pipeline's stages run, never what they compute.

An engine runs two stages of the one pipeline: the embedding stage (read,
hash, look up the content-hash store, decode and embed the misses, write
them to the store) and the exact neighbour search. Both engines call the same
functions for the work itself: :func:`trainleak.archives.iter_inputs` reads,
:func:`trainleak.workers.encode_chunk` decodes and embeds,
:class:`trainleak.store.EmbeddingStore` caches and
:meth:`trainleak.similarity.Similarity.knn` searches, so their results are
the same and they share one cache.

* ``local`` (:mod:`trainleak.engines.local`): this machine; the embedder's
  worker processes and the in-process blockwise search.
* ``ray`` (:mod:`trainleak.engines.ray`): a Ray cluster, local or remote
  (``pip install 'trainleak[ray]'``). Ray Data reads the inputs and embeds
  them in an actor pool; the search runs one task per database shard and the
  shards' top-k lists are merged.

Choose one with :attr:`trainleak.config.EmbedConfig.engine` (``--engine``).
It is built once per run and handed down: to :class:`trainleak.embedding.Embedder`
(which calls its ``embed``), and to the searches, which call
``engine.knn(similarity, queries, database, k)``; neither the embedder nor
:class:`~trainleak.similarity.Similarity` imports this package.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, get_args

import numpy as np

from trainleak.config import EngineName

if TYPE_CHECKING:
    from trainleak.config import EmbedConfig
    from trainleak.embedding import Embedder, EmbeddingSet
    from trainleak.neighbors import Backend
    from trainleak.similarity import Similarity


class Engine(Protocol):
    """Where the embedding stage and the neighbour search run.

    Built once per run (:func:`get_engine`) and handed down: it is an
    :class:`~trainleak.embedding.EmbedRunner` and a
    :class:`~trainleak.similarity.SearchRunner`, the protocols that the
    embedder and the search declare, so neither imports this package.
    """

    name: str

    def embed(
        self, embedder: Embedder, source: str | os.PathLike[str], set_name: str
    ) -> EmbeddingSet:
        """Embed one source with ``embedder``'s encoder, store and limits."""
        ...

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
        """Exact top-k of ``similarity``; shapes as :func:`trainleak.neighbors.knn`."""
        ...


def get_engine(
    name: EngineName | str = "local", address: str | None = None, workers: int | None = None
) -> Engine:
    """Return the engine called ``name``.

    Args:
        name: ``local`` or ``ray``.
        address: the Ray cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``);
            ``None`` starts a Ray instance on this machine unless ``RAY_ADDRESS``
            names one. Only for ``ray``.
        workers: encoder actors on Ray (``None``: one per GPU, or per CPU).

    Raises:
        ValueError: an unknown name, or an address for the local engine.

    Example:
        >>> get_engine("local").name
        'local'

    """
    if name == "local":
        if address is not None:
            raise ValueError("a Ray address needs the ray engine: pass --engine ray")
        from trainleak.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from trainleak.engines.ray import RayEngine

        return RayEngine(address, actors=workers)
    raise ValueError(f"unknown engine {name!r}: use one of {', '.join(get_args(EngineName))}")


def engine_for(config: EmbedConfig) -> Engine:
    """Return the engine an :class:`~trainleak.config.EmbedConfig` names."""
    return get_engine(config.engine, config.ray_address, config.workers)


__all__ = ["Engine", "EngineName", "engine_for", "get_engine"]
