"""trainleak: find a model's training data in what the model gives away."""

from trainleak._version import __version__
from trainleak.embedding import Embedder, EmbeddingSet, embed

__all__ = ["Embedder", "EmbeddingSet", "__version__", "embed"]
