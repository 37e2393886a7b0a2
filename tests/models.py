"""Small real embedding models the tests build, train-free but seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper


class TinyNet(torch.nn.Module):
    """conv -> relu -> global average pool -> linear to 16 dims."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def save_torchscript(path: Path) -> TinyNet:
    net = TinyNet().eval()
    torch.jit.script(net).save(str(path))
    return net


def save_onnx(path: Path, net: TinyNet) -> None:
    """Write the same network as an ONNX graph, built node by node from its weights."""
    w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits = [
        numpy_helper.from_array(w["conv.weight"], "cw"),
        numpy_helper.from_array(w["conv.bias"], "cb"),
        numpy_helper.from_array(np.ascontiguousarray(w["fc.weight"].T), "fw"),
        numpy_helper.from_array(w["fc.bias"], "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def coil_replayer(n: int, seed: int) -> list[np.ndarray]:
    """A generator that has memorized one COIL image: half its samples replay it.

    The other half are distinct COIL views of other objects. Used as
    ``python:models:coil_replayer``.
    """
    from PIL import Image

    from conftest import COIL

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            name = "obj1__0.png"
            noise = rng.normal(0, 3, (32, 32, 1))
        else:
            name = f"obj{rng.integers(2, 13)}__{rng.integers(0, 50)}.png"
            noise = np.zeros((32, 32, 1))
        image = np.asarray(Image.open(COIL / name).convert("RGB"), np.float64) + noise
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out
