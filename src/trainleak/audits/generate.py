"""Generations written to disk for ``extract``, tied to the generator that made them.

Samples go to ``root/prompt_NNNN/NNNNNN.png`` and a run resumes where it
stopped. ``root/manifest.json`` records what made them: the generator spec,
its fingerprint (weights or source file), the seed, the prompts and the
sampling settings. A later run into the same folder with anything different
is refused, so a resumed folder never mixes two generators' images (one
that did would report another model's memorisation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainleak.audits.sampling import generator_fingerprint
from trainleak.errors import AuditInputError
from trainleak.generators import get_generator, materialise

MANIFEST = "manifest.json"


def generate_groups(
    spec: str,
    root: str | os.PathLike[str],
    *,
    samples_per_prompt: int,
    seed: int = 0,
    prompts: list[str] | None = None,
    steps: int | None = None,
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write ``samples_per_prompt`` samples per prompt under ``root``; return ``root``.

    Args:
        spec: ``python:module:function`` or ``diffusers:DIR``.
        root: the folder for the generations (created; resumed when its
            manifest matches).
        samples_per_prompt: samples per prompt (one group without prompts).
        seed: sample ``i`` is seeded by ``(seed, i)`` alone.
        prompts: text prompts for a conditional pipeline, one group each.
        steps: denoising steps of a diffusers pipeline.
        batch_size: samples generated at a time.
        progress: called as ``progress(group, done, total)`` after each batch.

    Raises:
        AuditInputError: ``root`` holds generations of another generator,
            seed, prompt list or settings, or files without a manifest.

    """
    options: dict[str, Any] = {"steps": steps} if spec.startswith("diffusers:") and steps else {}
    generator = get_generator(spec, **options)
    groups: list[str | None] = list(prompts) if prompts else [None]
    manifest = {
        "generator": spec,
        "fingerprint": generator_fingerprint(generator, extra=json.dumps(options, sort_keys=True)),
        "seed": seed,
        "prompts": groups,
        "options": options,
    }
    root = Path(root)
    _claim(root, manifest)
    for g, prompt in enumerate(groups):
        folder = root / f"prompt_{g:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        if prompt is not None:
            (root / f"prompt_{g:04d}.txt").write_text(prompt, encoding="utf-8")
        for done in materialise(generator, folder, samples_per_prompt, seed, prompt, batch_size):
            if progress is not None:
                progress(folder.name, done, samples_per_prompt)
    return root


def _claim(root: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into a new folder, or check that it matches the one there."""
    path = root / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != manifest:
            changed = sorted(
                k for k in manifest if not isinstance(found, dict) or found.get(k) != manifest[k]
            )
            raise AuditInputError(
                f"{root} holds generations made with other settings ({', '.join(changed)} "
                "differ); resuming would mix two generators' images: use a new --out, or "
                "delete that folder to regenerate"
            )
        return
    if root.is_dir() and any(root.iterdir()):
        raise AuditInputError(
            f"{root} is not empty and has no {MANIFEST}: its images cannot be tied to this "
            "generator; use a new --out, or delete that folder to regenerate"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
