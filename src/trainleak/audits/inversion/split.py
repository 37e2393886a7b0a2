"""Load a model and cut it at a split point: the part a device would run.

A model is a TorchScript file, or ``python:module:factory`` whose factory
returns an ``nn.Module`` and whose weights come from ``--weights`` (a
safetensors file, or a ``torch.load(weights_only=True)`` state dict).
Nothing is unpickled unless the caller passes ``trust_pickle=True``.

The split is a name from ``model.named_modules()``; the device part is the
network up to that module's output. Choices that are ours:

* A Python model is cut with a forward hook on the split module that stops
  the forward pass there, so any ``forward`` works (functional ops included)
  and the layers after the split never run.
* A TorchScript model cannot be hooked (its compiled ``forward`` ignores
  Python hooks), so it is cut by running its sub-modules in order: the model
  must be a chain of its children (a ``torch.flatten`` is inserted before a
  ``Linear`` fed a feature map). The chain is checked against the full model
  on a probe batch; a model that is not a chain is refused with a hint.
* ``depth`` is the number of convolution and linear layers (modules with a
  weight of two or more dimensions) from the input up to and including the
  split module, in definition order; normalisation layers are not counted,
  as in "ResNet-18 has 18 layers".
* The chain (:attr:`SplitModel.chain`) is the finest sequence of modules
  whose composition equals the device part, found by expanding each module
  into its children wherever running them in order reproduces its output.
  Divide-and-conquer inversion cuts its blocks at this chain's boundaries.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: A features transform applied at the split (a defence), or ``None``.
FeatureTransform = Callable[[torch.Tensor], torch.Tensor]


class SplitError(ValueError):
    """An unknown split name or a model that cannot be cut; the message lists the fix."""


def load_model(
    spec: str | os.PathLike[str], weights: str | None = None, trust_pickle: bool = False
) -> nn.Module:
    """Load a model from a TorchScript file or ``python:module:factory`` (+ ``weights``).

    Args:
        spec: a TorchScript file, or ``python:module:factory``.
        weights: for ``python:`` models, a ``.safetensors`` file or a state
            dict saved with ``torch.save`` (read with ``weights_only=True``).
        trust_pickle: allow pickled files (they can run arbitrary code).

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        ValueError: the file is a pickle (and ``trust_pickle`` is off), is
            not a model, or the weights do not fit the architecture.

    Example:
        >>> m = load_model("python:trainleak.audits.inversion.nets:small_resnet")
        >>> type(m).__name__, m.training
        ('SmallResNet', False)

    """
    text = os.fspath(spec)
    if text.startswith("python:"):
        model = _from_factory(text[len("python:") :])
        if weights:
            try:
                model.load_state_dict(_read_state_dict(Path(weights), trust_pickle))
            except RuntimeError as err:
                first = str(err).splitlines()[:3]
                raise ValueError(
                    f"{weights} does not fit {text}: {' '.join(first)}; check that the factory "
                    "builds the architecture the weights were saved from"
                ) from None
        return model.eval()
    if weights:
        raise ValueError(
            "--weights applies to python:module:factory models; a model file has its own"
        )
    return _from_file(Path(text), trust_pickle).eval()


def _from_factory(target: str) -> nn.Module:
    module_name, sep, name = target.rpartition(":")
    if not sep or not module_name:
        raise ValueError(f"expected python:module:factory, got python:{target}")
    factory = getattr(importlib.import_module(module_name), name, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no callable {name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"python:{target} returned a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def _read_state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    # A safetensors file starts with an 8-byte little-endian header length,
    # then the JSON header's opening brace.
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(
            f"{path} holds more than tensors (a pickle), refused: save the weights with "
            "safetensors (safetensors.torch.save_file(model.state_dict(), 'w.safetensors')) or "
            "torch.save(model.state_dict(), ...), or pass --trust-pickle if you trust the file"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _from_file(path: Path, trust_pickle: bool) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others
        if not trust_pickle:
            raise ValueError(
                f"{path} is not a TorchScript archive and pickled models are refused: export "
                "with torch.jit.script(model).save(...), or give python:module:factory with "
                "--weights FILE.safetensors, or pass --trust-pickle if you trust the file"
            ) from err
    model = torch.load(str(path), map_location="cpu", weights_only=False)  # noqa: S614
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a torch nn.Module")
    return model


def is_script(module: nn.Module) -> bool:
    """Whether ``module`` is compiled TorchScript (Python hooks do not fire in it)."""
    return isinstance(module, torch.jit.ScriptModule)


def _kind(module: nn.Module) -> str:
    return str(getattr(module, "original_name", type(module).__name__))


def _run_chain(chain: list[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    for _, module in chain:
        if _kind(module) == "Linear" and x.ndim > 2:
            x = torch.flatten(x, 1)
        x = module(x)
    return x


def _expand(name: str, module: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Return the finest chain of sub-modules equal to ``module`` on ``x`` (itself if none)."""
    children = [(f"{name}.{n}" if name else n, c) for n, c in module.named_children()]
    if not children:
        return [(name, module)]
    with torch.no_grad():
        want = module(x)
        try:
            got = _run_chain(children, x)
        except (RuntimeError, TypeError, ValueError):
            return [(name, module)]
    if not isinstance(want, torch.Tensor) or got.shape != want.shape:
        return [(name, module)]
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6):
        return [(name, module)]
    out: list[tuple[str, nn.Module]] = []
    for child_name, child in children:
        out.extend(_expand(child_name, child, x))
        with torch.no_grad():
            x = _run_chain([(child_name, child)], x)
    return out


def _is_layer(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.ndim >= 2 and _kind(module) != "Embedding"


class SplitModel:
    """A model cut at ``split``: :meth:`device` gives the features sent off the device.

    Inputs are pixel tensors ``(n, C, H, W)`` in [0, 1]; the model's own
    normalisation ``(x - mean) / std`` is applied inside.

    Attributes:
        split: the module name the device part ends at.
        depth: conv/linear layers up to and including the split.
        chain: ``[(name, module)]`` whose composition is the device part, or
            ``None`` when the forward is not a chain of modules up to the split.
        bn_layers: batch-norm modules of the device part whose inputs can be
            observed (none for TorchScript).

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> sm = SplitModel(small_resnet().eval(), "layer1", (1, 16, 16))
        >>> sm.depth, tuple(sm.device(torch.zeros(2, 1, 16, 16)).shape)
        (5, (2, 16, 16, 16))
        >>> [name for name, _ in sm.chain]
        ['stem.0', 'stem.1', 'stem.2', 'layer1.0', 'layer1.1']

    """

    def __init__(
        self,
        model: nn.Module,
        split: str,
        input_shape: tuple[int, int, int],
        mean: float = 0.5,
        std: float = 0.5,
    ) -> None:
        names = [n for n, _ in model.named_modules() if n]
        if split not in names:
            raise SplitError(
                f"unknown split {split!r}; valid names (from named_modules()): {', '.join(names)}"
            )
        self.model, self.split = model.eval(), split
        self.input_shape: tuple[int, int, int] = (
            int(input_shape[0]),
            int(input_shape[1]),
            int(input_shape[2]),
        )
        self.mean, self.std = mean, std
        self.module = dict(model.named_modules())[split]
        self.script = is_script(model)
        for p in model.parameters():
            p.requires_grad_(False)
        order = [n for n, _ in model.named_modules()]
        last = max(i for i, n in enumerate(order) if n == split or n.startswith(split + "."))
        modules = dict(model.named_modules())
        self.depth = sum(_is_layer(modules[n]) for n in order[1 : last + 1])
        # Inverters build their nets and inputs where the model's weights are.
        self.torch_device = next(
            (t.device for t in itertools.chain(model.parameters(), model.buffers())),
            torch.device("cpu"),
        )
        probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
        probe = probe.to(self.torch_device)
        full = _expand("", model, self._normalise(probe))
        cut = [i for i, (n, _) in enumerate(full) if n == split or n.startswith(split + ".")]
        contiguous = bool(cut) and cut == list(range(cut[0], cut[-1] + 1))
        self.full_chain: list[tuple[str, nn.Module]] | None = full if len(full) > 1 else None
        self.chain = full[: cut[-1] + 1] if contiguous and self.full_chain else None
        if self.script and self.chain is None:
            raise SplitError(
                f"this TorchScript model cannot be cut at {split!r}: its forward is not a chain "
                f"of sub-modules up to there (chain found: {[n for n, _ in full]}); pick a name "
                "from that chain, or load the model as python:module:factory --weights FILE"
            )
        prefix = order[1 : last + 1]
        self.bn_layers = (
            []
            if self.script
            else [
                modules[n]
                for n in prefix
                if isinstance(modules[n], nn.modules.batchnorm._BatchNorm)
            ]
        )

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def device(self, x: torch.Tensor) -> torch.Tensor:
        """Features at the split for pixel inputs ``x`` ``(n, C, H, W)`` in [0, 1]."""
        z = self._normalise(x)
        if self.chain is not None:
            return _run_chain(self.chain, z)
        return _run_until(self.model, self.module, z)

    def logits(self, x: torch.Tensor, transform: FeatureTransform | None = None) -> torch.Tensor:
        """Full-model outputs, with ``transform`` applied to the features at the split."""
        z = self._normalise(x)
        if transform is None:
            return self.model(z)
        if self.script:
            assert self.full_chain is not None and self.chain is not None  # noqa: S101
            k = len(self.chain)
            return _run_chain(self.full_chain[k:], transform(_run_chain(self.chain, z)))
        handle = self.module.register_forward_hook(lambda _m, _i, out: transform(out))
        try:
            return self.model(z)
        finally:
            handle.remove()


class _Stop(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def _run_until(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` until ``module`` returns, and return that output (the rest never runs)."""

    def stop(_m: nn.Module, _i: Any, out: Any) -> None:
        raise _Stop(out)

    handle = module.register_forward_hook(stop)
    try:
        model(x)
    except _Stop as done:
        if not isinstance(done.output, torch.Tensor):
            raise SplitError(
                f"the split module returns a {type(done.output).__name__}, not a tensor; "
                "pick a module whose output is one tensor"
            ) from None
        return done.output
    finally:
        handle.remove()
    raise SplitError("the split module never ran in the model's forward; pick another name")


def split_names(model: nn.Module) -> list[str]:
    """All module names a split can name.

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> split_names(small_resnet())[:3]
        ['stem', 'stem.0', 'stem.1']

    """
    return [n for n, _ in model.named_modules() if n]
