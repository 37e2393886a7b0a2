"""What the service shows of its index: nothing that tells where files are on the host."""

from __future__ import annotations

from typing import Any

#: Manifest keys that name files or folders of the host (``GET /v1/index`` leaves them out).
PATH_KEYS = frozenset(
    ("root", "cache", "path", "weights", "files", "spec", "spec_options", "execution")
    + ("ray_address",)
)


def without_paths(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return ``manifest`` without what tells where things are on the host.

    Keys in :data:`PATH_KEYS` are dropped at any depth (the holdout's root,
    the cache folder, weights files, an ``onnx:FILE`` spec, shard file
    names), and so is any other string that is an absolute path.

    Example:
        >>> without_paths({"generation": 3, "holdout": {"n": 5, "root": "/data/hold"},
        ...                  "settings": {"embed": {"cache": "/home/me/.cache", "workers": 2},
        ...                               "note": "/srv/x"}})
        {'generation': 3, 'holdout': {'n': 5}, 'settings': {'embed': {'workers': 2}}}

    """

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in PATH_KEYS and not _is_path(v)}
        if isinstance(value, list):
            return [clean(v) for v in value if not _is_path(v)]
        return value

    out: dict[str, Any] = clean(manifest)
    return out


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~", "\\\\")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))
    )
