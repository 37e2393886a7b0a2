"""The evidence packet's contents, and what makes a run checkable: hashes, versions, command.

The packet records the SHA-256 of every input file (and of a generator's
files), the versions of the software that computed the numbers, and the exact
command line, so that someone else can confirm they hold the same inputs and
re-run the same command to get the same numbers.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from trainleak.audits._evidence_stats import (
    NEIGHBOURS,
    VERDICT_WORDS,
    OwnerMatches,
    reference_needed,
    smallest_p,
    verdict_text,
)
from trainleak.audits.sampling import GeneratedSet
from trainleak.config import EvidenceConfig
from trainleak.embedding import EmbeddingSet
from trainleak.encoders import get_encoder
from trainleak.encoders.base import EncoderInfo
from trainleak.generators import Generator

#: Packages whose versions can change the numbers (decoding, embedding, search).
VERSIONED = (
    "numpy", "pillow", "dlib", "dlib-bin", "face_recognition_models", "torch", "onnxruntime",
    "faiss-cpu", "opencv-python", "opencv-python-headless",
)  # fmt: skip

#: Read files in blocks of this many bytes while hashing (a large file is never read whole).
HASH_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's bytes, read a block at a time.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
        ...     _ = fh.write(b"abc")
        >>> sha256_file(fh.name)[:16]
        'ba7816bf8f01cfea'

    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def set_files(emb: EmbeddingSet, set_name: str) -> list[dict[str, Any]]:
    """Return the files behind one embedded set, embedded and skipped, each with its SHA-256.

    A member of an archive (a tar shard's ``<shard>/<key>``) is recorded by
    the archive file it came from. A skipped file is hashed too: it is part of
    what the user handed over, and a changed file could make it readable.

    Returns:
        ``{"set", "path", "sha256", "used"}`` per file, sorted by path.

    """
    used = {p for p in emb.paths}
    skipped = {s.path for s in emb.skipped}
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(used | skipped):
        file = _existing_file(path)
        if file is None or file in out:
            continue
        out[file] = {
            "set": set_name,
            "path": file,
            "sha256": sha256_file(file),
            "used": path in used,
        }
    return [out[k] for k in sorted(out)]


def _existing_file(path: str) -> str | None:
    """``path``, or the archive file above an archive member's ``<shard>/<key>``."""
    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.is_file():
            return str(candidate)
        if candidate.is_dir():
            return None
    return None


def generator_files(generator: Generator) -> list[dict[str, Any]]:
    """Return the files that determine a generator's samples, each with its SHA-256.

    ``diffusers:DIR``: every file of the pipeline folder; ``python:module:function``:
    the module's source file (what it imports is not followed; say so in reports).
    """
    folder = generator.name.partition(":")[2]
    paths: Iterable[Path]
    if generator.name.startswith("diffusers:") and Path(folder).is_dir():
        paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    else:
        func = getattr(generator, "func", None)
        source = inspect.getsourcefile(func) if func is not None else None
        paths = [Path(source)] if source and os.path.isfile(source) else []
    return [
        {"set": "against", "path": str(p), "sha256": sha256_file(p), "used": True} for p in paths
    ]


def versions() -> dict[str, str]:
    """Versions of Python, trainleak and the installed packages in :data:`VERSIONED`."""
    from trainleak._version import __version__

    out = {"python": platform.python_version(), "trainleak": __version__}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["platform"] = platform.platform()
    return out


def command_line(argv: Sequence[str] | None) -> tuple[list[str], str]:
    """Return the command as a list and as one shell line that re-runs it.

    Example:
        >>> command_line(["trainleak", "evidence", "--mine", "my photos"])[1]
        "trainleak evidence --mine 'my photos'"

    """
    args = list(argv) if argv is not None else list(sys.argv)
    return args, shlex.join(args)


@dataclass
class Against:
    """The searched images, embedded: a folder's set, or a generator's samples."""

    gen: GeneratedSet
    ids: list[str]
    emb: EmbeddingSet | None = None
    generator: Generator | None = None
    files: list[dict[str, Any]] = field(default_factory=list)


#: The test, as the packet states it.
METHOD = (
    "rank test over owners: the statistic of the owner and of each of R reference owners "
    "(never trained on) against the searched images; p = (1 + #{reference owners with "
    "statistic >= the owner's}) / (R + 1)"
)
ASSUMPTIONS = (
    "Under the null (the owner's images were not used) the owner's statistic is exchangeable "
    "with the reference owners': the reference owners are drawn like the owner (same kind of "
    "images, similar numbers of images, same conditions) and none of them was trained on. "
    "Ties count against the owner. The smallest attainable p is 1 / (R + 1)."
)


def _noun(info: EncoderInfo) -> str:
    kind = getattr(info, "kind", None)
    return {"identity": "photos", "copy": "works"}.get(str(kind), "images")


def build_packet(
    config: EvidenceConfig,
    info: EncoderInfo,
    own: EmbeddingSet,
    found: Against,
    ref_emb: EmbeddingSet | None,
    others: dict[str, OwnerMatches],
    user: OwnerMatches,
    stat: float,
    p: float,
    key: str,
    threshold: float,
    pairs: list[dict[str, Any]],
    argv: list[str] | None,
) -> dict[str, Any]:
    args, line = command_line(argv if argv is not None else sys.argv)
    n_ref = len(others)
    near = sum(1 for r in pairs if r["label"] == "near-copy")
    near_matches = sum(1 for r in pairs if r["label"] == "near-copy" and r["match"])
    summary = {
        "verdict": key,
        "p_value": p,
        "alpha": config.alpha,
        "statistic": config.statistic,
        "owner_statistic": stat,
        "n_reference": n_ref,
        "smallest_p": smallest_p(n_ref),
        "reference_needed": reference_needed(config.alpha),
        "n_mine": len(own),
        "n_against": len(found.gen.indices),
        "n_matches": user.count,
        "n_near_copies": near,
        "n_look_alikes": user.count - near_matches,
        "pairs_checked_for_copies": len(pairs),
    }
    reference: list[dict[str, Any]] = [
        {"owner": n, "statistic": m.statistic(config.statistic), "best": m.best,
         "count": m.count, "n_images": m.n_images}
        for n, m in others.items()
    ]  # fmt: skip
    reference.sort(key=lambda r: (-float(r["statistic"]), str(r["owner"])))
    files = set_files(own, "mine") + found.files
    if ref_emb is not None:
        files += set_files(ref_emb, "reference")
    from trainleak._version import __version__

    return {
        "tool": "trainleak",
        "version": __version__,
        "command": "evidence",
        "argv": args,
        "command_line": line,
        "verdict": {
            "key": key,
            "text": verdict_text(key, summary, _noun(info)),
            "words": VERDICT_WORDS[key].format(noun=_noun(info)),
        },
        "summary": summary,
        "method": {
            "test": METHOD,
            "statistic": config.statistic,
            "neighbours": NEIGHBOURS,
            "assumptions": ASSUMPTIONS,
            "copy_rule": (
                "near-copy: pixel-level similarity (the pixel encoder) at or above "
                f"{config.copy_threshold or get_encoder('pixel').info.default_threshold}"
                + (", or a copy encoder's match" if getattr(info, "kind", None) == "copy" else "")
                + "; look-alike: the encoder matches, the pixels do not"
            ),
        },
        "owner": {
            "statistic": stat,
            "best": user.best,
            "count": user.count,
            "n_images": user.n_images,
        },  # fmt: skip
        "reference": reference,
        "threshold": {
            "value": threshold,
            "method": "given" if config.threshold is not None else "encoder default",
            "counted_over": "images",
            "note": "the match threshold counts matched searched images; the verdict's p-value "
            "counts owners (the rank test), not images",
        },
        "encoder": info.to_dict(),
        "inputs": {
            "mine": own.counts(),
            "against": found.emb.counts()
            if found.emb is not None
            else {
                "root": found.generator.name if found.generator else "",
                "samples": config.n_samples,
                "embedded": len(found.gen.indices),
                "skipped": len(found.gen.skipped),
                "fingerprint": found.gen.fingerprint,
            },
            "reference": ref_emb.counts() if ref_emb is not None else None,
        },  # fmt: skip
        "pairs": pairs,
        "files": files,
        "versions": versions(),
        "settings": config.to_dict(),
    }


__all__ = [
    "ASSUMPTIONS",
    "METHOD",
    "Against",
    "build_packet",
    "command_line",
    "generator_files",
    "set_files",
    "sha256_file",
    "versions",
]
