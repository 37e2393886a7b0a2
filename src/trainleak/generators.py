"""Generators: one protocol, ``sample(n, seed, prompt) -> images``, three adapters.

* ``python:module:function`` - a callable ``f(n, seed)`` or
  ``f(n, seed, prompt)`` returning ``n`` images (PIL images or arrays, uint8
  or floats in [0, 1]).
* ``diffusers:DIR`` - a local diffusers pipeline folder, loaded offline.
* a folder of images is not a generator: audits read it as generated images.

Sample ``i`` of a run seeded ``s`` depends on ``(s, i)`` only, so batch size
and interruptions never change the images: for ``diffusers`` each image gets
its own ``torch.Generator`` seeded :func:`sample_seed` ``(s, i)``; a
``python`` callable is asked for one image at a time with that seed.

:func:`materialise` writes samples to PNG files as they are produced, one
folder per prompt; files already there are not generated again, so an
interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from trainleak._optional import require
from trainleak.errors import TrainleakError

log = logging.getLogger(__name__)


class Generator(Protocol):
    """Anything that can produce images reproducibly."""

    name: str

    def sample(self, n: int, seed: int, prompt: str | None = None) -> list[np.ndarray]:
        """Return ``n`` RGB uint8 images ``(H, W, 3)``."""
        ...


def to_rgb8(image: Any) -> np.ndarray:
    """Convert a PIL image or an array (uint8, or float in [0, 1]) to RGB uint8.

    Example:
        >>> to_rgb8(np.zeros((4, 5))).shape
        (4, 5, 3)

    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def sample_seed(seed: int, index: int) -> int:
    """Return the seed of sample ``index`` in a run seeded ``seed`` (stable, 32-bit).

    Example:
        >>> sample_seed(0, 1) == sample_seed(0, 1) != sample_seed(1, 1)
        True

    """
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class GeneratorSpecError(TrainleakError, ValueError):
    """A generator spec that cannot be loaded; the message says how to fix it."""


class PythonGenerator:
    """``python:module:function`` - the callable makes the images."""

    def __init__(self, target: str) -> None:
        module_name, sep, func_name = target.rpartition(":")
        if not sep or not module_name:
            raise ValueError(f"expected python:module:function, got python:{target}")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise  # the module exists but imports something missing: show that
            raise GeneratorSpecError(
                f"cannot import {module_name!r} for python:{target}: put the folder that holds "
                f"{module_name.replace('.', '/')}.py on PYTHONPATH (e.g. PYTHONPATH=. trainleak "
                "...), or install its package"
            ) from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise ValueError(f"{module_name} has no callable {func_name!r}")
        self.func: Callable[..., Any] = func
        self.name = f"python:{target}"

    def sample(self, n: int, seed: int, prompt: str | None = None) -> list[np.ndarray]:
        """Return samples ``0..n-1`` of the run seeded ``seed``."""
        return self.sample_at(list(range(n)), seed, prompt)

    def sample_at(
        self, indices: list[int], seed: int, prompt: str | None = None
    ) -> list[np.ndarray]:
        """Ask the callable for each image with its own seed."""
        out = []
        for i in indices:
            s = sample_seed(seed, i)
            images = self.func(1, s) if prompt is None else self.func(1, s, prompt)
            out.append(to_rgb8(list(images)[0]))
        return out


class DiffusersGenerator:
    """``diffusers:DIR`` - a local pipeline, loaded with ``local_files_only``."""

    def __init__(self, folder: str, steps: int | None = None, device: str = "cpu") -> None:
        diffusers = require("diffusers", extra="diffusion", needed_for="a diffusers:DIR generator")
        import torch

        if not Path(folder).is_dir():
            raise FileNotFoundError(f"no diffusers pipeline folder at {folder}")
        self._torch = torch
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = steps
        self.device = device
        self.name = f"diffusers:{folder}"

    def sample(self, n: int, seed: int, prompt: str | None = None) -> list[np.ndarray]:
        """Return samples ``0..n-1`` of the run seeded ``seed``."""
        return self.sample_at(list(range(n)), seed, prompt)

    def sample_at(
        self, indices: list[int], seed: int, prompt: str | None = None
    ) -> list[np.ndarray]:
        """Run the pipeline on a batch, one seeded torch generator per image."""
        torch = self._torch
        n = len(indices)
        gens = [torch.Generator(self.device).manual_seed(sample_seed(seed, i)) for i in indices]
        kwargs: dict[str, Any] = {"generator": gens, "output_type": "np"}
        if self.steps is not None:
            kwargs["num_inference_steps"] = self.steps
        if prompt is not None:
            kwargs["prompt"] = [prompt] * n
        else:
            kwargs["batch_size"] = n
        images = self.pipe(**kwargs).images
        return [to_rgb8(im) for im in images]


def get_generator(spec: str, **options: Any) -> Generator:
    """Build a generator from ``python:module:function`` or ``diffusers:DIR``."""
    kind, sep, rest = spec.partition(":")
    if kind == "python" and sep:
        return PythonGenerator(rest)
    if kind == "diffusers" and sep:
        return DiffusersGenerator(rest, **options)
    raise ValueError(
        f"unknown generator {spec!r}: use a folder of images, python:module:function "
        "or diffusers:DIR"
    )


def is_generator_spec(spec: str) -> bool:
    """Whether ``spec`` names a generator adapter rather than a folder."""
    return spec.startswith(("python:", "diffusers:")) and not os.path.exists(spec)


def materialise(
    generator: Generator,
    folder: str | os.PathLike[str],
    n: int,
    seed: int,
    prompt: str | None = None,
    batch_size: int = 16,
) -> Iterator[int]:
    """Write ``n`` samples as ``folder/{i:06d}.png``; yield the count done after each batch.

    Samples whose file exists are not generated again (resume). Sample ``i``
    is seeded by :func:`sample_seed` ``(seed, i)`` alone, so the images do
    not depend on ``batch_size`` or on where a run was interrupted.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (out / f"{i:06d}.png").exists()]
    done = n - len(todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        sample_at = getattr(generator, "sample_at", None)
        if sample_at is not None:
            images = sample_at(chunk, seed, prompt)
        else:
            images = [generator.sample(1, sample_seed(seed, i), prompt)[0] for i in chunk]
        for i, image in zip(chunk, images, strict=True):
            tmp = out / f".{i:06d}.png.tmp"
            Image.fromarray(image).save(tmp, format="PNG")
            os.replace(tmp, out / f"{i:06d}.png")
        done += len(chunk)
        yield done
