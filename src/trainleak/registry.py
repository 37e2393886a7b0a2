"""A small registry of named factories, shared by encoders and audits."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """Maps validated lower-case names to factories.

    Example:
        >>> reg: Registry[int] = Registry("numbers")
        >>> _ = reg.register("one")(lambda: 1)
        >>> reg.get("one")()
        1
        >>> reg.names("o*")
        ['one']

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""
        if not _NAME.match(name):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: use lower-case letters, digits, '-' or '_'"
            )
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorate(item: T) -> T:
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        """Return the item registered as ``name``; the error lists the known names."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Return the sorted registered names matching a shell-style pattern."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items


#: Comparison rules that are more than a vector metric, by the metric an encoder
#: declares (``local``: :class:`trainleak.local_search.LocalSimilarity`). Each entry
#: maps an :class:`~trainleak.encoders.base.EncoderInfo` to its rule; it is registered
#: at the top (``trainleak/__init__.py``), so ``similarity`` never imports the rules
#: that build on it. Plain metrics (``cosine``, ``tiled_l2``) need no entry.
COMPARISON_RULES: Registry[Callable[..., object]] = Registry("comparison rule")
