"""trainleak: find a model's training data in what the model gives away.

The front door (see :mod:`trainleak.api`)::

    import trainleak as tl
    emb = tl.embed("faces/", encoder="face")
    scores, idx = tl.knn(emb.vectors, emb.vectors, k=5)
    result = tl.audit(train="train/", synthetic="synth/", holdout="holdout/", fpr=0.01)
    result.write("out/")

Names load on first use, so ``import trainleak`` (and the command line's
start-up) pulls in neither numpy-heavy audit code nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from trainleak import result as _result
from trainleak._version import __version__
from trainleak.registry import COMPARISON_RULES


def _report_writer() -> _result.Writer:
    # Results write themselves through the report layer, which sits above the
    # audits that make them; loaded on the first write, not on import.
    from trainleak.report.writers import write_result

    return write_result


_result.install_writers(_report_writer)


@COMPARISON_RULES.register("local")
def _local_rule(info: Any) -> Any:
    # The local-feature encoders' rule builds on Similarity (which cannot import it):
    # descriptor votes, then verification. Loaded on first use, not on import.
    from trainleak.local_search import LocalSimilarity

    return LocalSimilarity.of_local(info)

#: Public name -> module that defines it.
_EXPORTS = {
    "embed": "trainleak.embedding",
    "Embedder": "trainleak.embedding",
    "EmbeddingSet": "trainleak.embedding",
    "knn": "trainleak.neighbors",
    "audit": "trainleak.api",
    "dedup": "trainleak.api",
    "extract": "trainleak.api",
    "membership": "trainleak.api",
    "evidence": "trainleak.audits._evidence",
    "embeddings": "trainleak.api",
    "loss_membership": "trainleak.audits.loss_attack",
    "invert": "trainleak.audits.inversion.audit",
    "Result": "trainleak.result",
    "TrainleakError": "trainleak.errors",
    "check": "trainleak.gate.check",
    "Index": "trainleak.gate.index",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from trainleak.api import audit, dedup, embeddings, extract, membership
    from trainleak.audits._evidence import evidence
    from trainleak.audits.inversion.audit import invert
    from trainleak.audits.loss_attack import loss_membership
    from trainleak.embedding import Embedder, EmbeddingSet, embed
    from trainleak.errors import TrainleakError
    from trainleak.gate.check import check
    from trainleak.gate.index import Index
    from trainleak.neighbors import knn
    from trainleak.result import Result


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainleak' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Embedder",
    "EmbeddingSet",
    "Index",
    "Result",
    "TrainleakError",
    "__version__",
    "audit",
    "check",
    "dedup",
    "embed",
    "embeddings",
    "evidence",
    "extract",
    "invert",
    "knn",
    "loss_membership",
    "membership",
]
