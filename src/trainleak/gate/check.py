"""``check``: one verdict per image against an index, and "is my face in there?".

A verdict is ``block`` when the image's leak score is strictly above the
index's threshold, the rule ``audit`` flags by, so an index built from a
training set and holdout answers as ``audit`` does for the same sets and
settings. ``release`` otherwise; ``skip`` (with the reason) for an input that
cannot be read or embedded. A released verdict names no training image: the
gate tells whoever asks only what they need to know. The gate fails closed
(:mod:`trainleak.decide.failclosed`): a score that is not a finite number, a
search that found no row although the index has live rows, a row that cannot
be read, or a shard found damaged blocks with the reason ``index damaged``.

Identity answers (``identity=True``) aggregate several photos of one person:
the person's answer is the best-scoring of their photos (the maximum over
photos of the score against the training set), and it says how many of the
photos point at the same training identity. A maximum over ``m`` photos
falsely matches more often than one photo: at most ``m`` times the calibrated
per-photo rate (a union bound), which the answer states in words.
"""

from __future__ import annotations

from trainleak.config import CheckConfig
from trainleak.gate.answers import false_match_rate, false_match_words
from trainleak.gate.index import Index, PathLike
from trainleak.gate.verdict import COLUMNS, Inputs, Verdict, VerdictName

__all__ = [
    "COLUMNS",
    "Inputs",
    "Verdict",
    "VerdictName",
    "check",
    "false_match_rate",
    "false_match_words",
]


def check(
    index: Index | PathLike,
    images: Inputs,
    *,
    identity: bool = False,
    config: CheckConfig | None = None,
) -> list[Verdict]:
    """Check images against an index before they are released.

    Args:
        index: an opened :class:`Index` or an index folder (opened and closed here).
        images: folders, globs, list files or files; ``(n, dim)`` vectors
            from the index's encoder; or an :class:`EmbeddingSet`.
        identity: answer per person instead of per image ("is my face in
            there?"): people are the first sub-folders under each folder
            given (or each folder itself when it has none).
        config: search and embedding settings when ``index`` is a folder.

    Returns:
        One :class:`Verdict` per input in input order (per person, sorted,
        with ``identity=True``). Use :meth:`Index.iter_check` to stream.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from trainleak.config import EmbedConfig, IndexConfig
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("train", "outbox"):
        ...     (d / name).mkdir()
        >>> Image.radial_gradient("L").save(d / "train" / "a.png")
        >>> Image.radial_gradient("L").save(d / "outbox" / "copy.png")
        >>> Image.linear_gradient("L").save(d / "outbox" / "new.png")
        >>> cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, no_cache=True))
        >>> Index.build(d / "idx", d / "train", config=cfg).close()
        >>> [(pathlib.Path(v.path).name, v.verdict) for v in check(d / "idx", d / "outbox")]
        [('copy.png', 'block'), ('new.png', 'release')]

    """
    if isinstance(index, Index):
        return index.check_identity(images) if identity else index.check(images)
    with Index.open(index, config=config) as opened:
        return opened.check_identity(images) if identity else opened.check(images)
