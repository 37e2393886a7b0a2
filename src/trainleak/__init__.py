"""trainleak: find a model's training data in what the model gives away."""

from trainleak._version import __version__
from trainleak.embedding import EmbeddingSet, embed

__all__ = ["EmbeddingSet", "__version__", "embed"]
