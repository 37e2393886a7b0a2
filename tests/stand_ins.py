"""Tiny stand-ins for the named models: the published input/output signatures, random weights.

Each is a real model file (ONNX built node by node, or TorchScript) that
onnxruntime or torch runs; nothing is downloaded. The ONNX ones average-pool
the input to a coarse grid and project it with a seeded random matrix, so
their outputs change with the channel order, the alignment and the
normalisation, which is what the preprocessing tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from trainleak.encoders.cards import CARDS


def save_pooled_onnx(
    path: Path, side: int, dim: int, pool: int, *, with_norm: bool = False, seed: int = 0
) -> Path:
    """Write ``(n, 3, side, side) -> (n, dim)`` (and ``norm (n, 1)`` when ``with_norm``)."""
    cells = 3 * (side // pool) ** 2
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1 / np.sqrt(cells), (cells, dim)).astype(np.float32)
    b = rng.normal(0, 0.01, dim).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[pool] * 2, strides=[pool] * 2),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dim])]
    if with_norm:  # AdaFace's models return (feature, norm)
        nodes.append(helper.make_node("ReduceL2", ["y"], ["norm"], keepdims=1))
        outputs.append(helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["n", 1]))
    graph = helper.make_graph(
        nodes,
        "stand_in",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, side, side])],
        outputs,
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class PooledNet(torch.nn.Module):
    """Any-size input -> 8x8 average grid -> linear ``dim`` (a TorchScript stand-in)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 64, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def save_pooled_torchscript(path: Path, dim: int) -> Path:
    """Write a scripted :class:`PooledNet`."""
    torch.jit.script(PooledNet(dim).eval()).save(str(path))
    return path


def save_stand_in(name: str, folder: Path) -> Path:
    """Write the stand-in for the named model ``name`` under its card's file name."""
    card = CARDS[name]
    path = folder / card.file_name
    if path.suffix == ".onnx":
        side = card.size[0]
        return save_pooled_onnx(
            path, side, card.dim, 8 if side == 112 else 16, with_norm=name == "adaface"
        )
    return save_pooled_torchscript(path, card.dim)


def stand_in_folder(folder: Path) -> Path:
    """Write every named model's stand-in into ``folder`` (a ``$TRAINLEAK_MODELS``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CARDS:
        save_stand_in(name, folder)
    return folder
