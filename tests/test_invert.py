"""``invert``: split-computing inversion on a small CNN trained here on ORL faces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trainleak.audits.inversion import (
    DCIInverter,
    DecoderInverter,
    Defense,
    OptimizeInverter,
    SplitError,
    SplitModel,
    load_model,
    psnr,
)
from trainleak.audits.inversion.audit import class_indices, read_images
from trainleak.audits.inversion.nets import small_resnet
from trainleak.cli import main
from trainleak.report import report_header

from conftest import link_orl

FACTORY = "python:test_invert:tiny_resnet"
SHAPE = (1, 28, 23)


def tiny_resnet() -> torch.nn.Module:
    """The factory the CLI loads: a width-8 SmallResNet with 40 outputs."""
    return small_resnet(classes=40, width=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Two shared cores: one intra-op thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def orl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("orl_inv")
    return {
        "train": link_orl(root / "train", range(1, 11), range(1, 9)),
        "query": link_orl(root / "query", range(1, 4), range(9, 11)),
        "aux": link_orl(root / "aux", range(11, 21), range(1, 5)),
    }


@pytest.fixture(scope="module")
def trained(orl: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SmallResNet (width 8) trained for 8 epochs to tell 10 ORL people apart."""
    x, rows, _ = read_images(orl["train"], "train", 1, None)
    y = torch.tensor(class_indices([r["label"] for r in rows]))
    torch.manual_seed(0)
    model = tiny_resnet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(8):
        model.train()
        for idx in torch.randperm(len(x)).split(16):
            loss = torch.nn.functional.cross_entropy(model((x[idx] - 0.5) / 0.5), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("model")
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    q, _, _ = read_images(orl["query"], "query", 1, None)
    aux, _, _ = read_images(orl["aux"], "aux", 1, None)
    return {"model": model, "weights": folder / "w.safetensors", "query": q, "aux": aux}


def test_early_split_beats_deep_split_and_mean_image(trained: dict) -> None:
    x = trained["query"]
    baseline = psnr(x, x.mean(0, keepdim=True).expand_as(x)).mean()
    scores = {}
    for split in ("stem", "layer3"):
        sm = SplitModel(trained["model"], split, SHAPE)
        inv = OptimizeInverter(steps=120).fit(sm)
        scores[split] = psnr(x, inv.reconstruct(sm.device(x))).mean()
    assert scores["stem"] > scores["layer3"] + 8, scores
    assert scores["stem"] > baseline + 15, (scores, baseline)


def test_every_method_lowers_its_loss(trained: dict) -> None:
    sm = SplitModel(trained["model"], "layer1", SHAPE)
    feats = sm.device(trained["query"][:2])
    opt = OptimizeInverter(steps=40).fit(sm)
    opt.reconstruct(feats)
    dci = DCIInverter(synth=32, train_steps=40, block_steps=10, steps=30, width=8).fit(sm)
    assert [len(b) for b in dci.blocks_] == [3, 1, 1]
    for history in dci.block_histories_:
        assert np.mean(history[-5:]) < np.mean(history[:5])
    dci.reconstruct(feats)
    dec = DecoderInverter(steps=60, width=8).fit(sm, trained["aux"])
    for history in (opt.loss_history_, dci.loss_history_, dec.loss_history_):
        assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])


def test_noise_defence_lowers_psnr_and_batching_does_not_change_results(trained: dict) -> None:
    x = trained["query"][:4]
    sm = SplitModel(trained["model"], "stem", SHAPE)
    inv = OptimizeInverter(steps=60).fit(sm)
    feats = sm.device(x)
    clean = inv.reconstruct(feats)
    noisy = inv.reconstruct(Defense.parse("noise:1.0")(feats))
    assert psnr(x, clean).mean() > psnr(x, noisy).mean() + 5
    one = torch.cat([inv.reconstruct(feats[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(one, clean, atol=1e-3)


def test_loading_refuses_pickles_and_accepts_torchscript_and_safetensors(
    trained: dict, tmp_path: Path
) -> None:
    model = trained["model"]
    x = trained["query"][:2]
    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)
    with pytest.raises(ValueError, match="pickled models are refused"):
        load_model(pickled)
    assert isinstance(load_model(pickled, trust_pickle=True), torch.nn.Module)
    bad_weights = tmp_path / "w.pt"
    torch.save({"state": model.state_dict(), "opt": Defense("noise", 1.0)}, bad_weights)
    with pytest.raises(ValueError, match="refused"):
        load_model(FACTORY, str(bad_weights))
    scripted = tmp_path / "model.torchscript"
    torch.jit.script(model).save(str(scripted))
    from_script = SplitModel(load_model(scripted), "layer2", SHAPE)
    from_st = SplitModel(load_model(FACTORY, str(trained["weights"])), "layer2", SHAPE)
    want = SplitModel(model, "layer2", SHAPE).device(x)
    assert torch.allclose(from_script.device(x), want, atol=1e-5)
    assert torch.allclose(from_st.device(x), want, atol=1e-5)
    assert from_script.depth == from_st.depth == 10
    with pytest.raises(SplitError, match="layer1.0.conv1"):
        SplitModel(model, "layer9", SHAPE)


def test_cli_writes_contracted_report(trained: dict, orl: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "images"
    link_orl(images, range(1, 3), range(9, 11))
    (images / "s1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    argv = ["invert", "--model", FACTORY, "--weights", str(trained["weights"])]
    argv += ["--split", "stem,layer2", "--images", str(images), "--steps", "40"]
    argv += ["--defense", "noise:0.5", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    # The header every audit writes, with the command line and the device it ran on.
    head = report_header("invert", ["trainleak", *argv], report["settings"], "cpu")
    assert {k: report[k] for k in head if k != "created"} == {
        k: v for k, v in head.items() if k != "created"
    }
    assert len(report["created"]) == len(head["created"]) and report["created"].endswith("Z")
    assert [e["split"] for e in report["splits"]] == ["stem", "layer2"]
    for e in report["splits"]:
        assert {"split", "depth", "method", "psnr", "ssim", "identity_similarity"} <= set(e)
        sim = e["identity_similarity"]
        assert sim is None or -1 <= sim <= 1
        assert e["defense"]["accuracy"] is not None
    assert report["splits"][0]["psnr"] > report["splits"][1]["psnr"]
    assert report["skipped"][0]["path"].endswith("broken.png")
    assert "<svg" in (out / "report.html").read_text()


def test_cli_unknown_split_is_a_usage_error(
    trained: dict, orl: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["invert", "--model", FACTORY, "--split", "layer9", "--images", str(orl["query"])]
    assert main(argv + ["--no-identity"]) == 2
    err = capsys.readouterr().err
    assert "unknown split 'layer9'" in err and "layer2.1" in err
    assert main(argv + ["--defense", "blur:3"]) == 2
    assert "noise:SIGMA" in capsys.readouterr().err


def test_cli_device_names_are_checked_and_recorded(
    trained: dict, orl: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["invert", "--model", FACTORY, "--weights", str(trained["weights"]), "--no-identity"]
    argv += ["--split", "stem", "--images", str(orl["query"]), "--steps", "5"]
    assert main(argv + ["--device", "gpu", "--out", str(tmp_path / "bad")]) == 2
    assert "use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(argv + ["--device", "cuda", "--out", str(tmp_path / "none")]) == 2
        assert "torch sees no CUDA GPU here: use --device cpu" in capsys.readouterr().err
    assert main(argv + ["--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert json.loads((tmp_path / "cpu" / "report.json").read_text())["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["optimize", "dci", "decoder"])
def test_invert_on_cuda_matches_the_cpu(
    trained: dict, orl: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """Every method runs on the GPU: nets, noise and inputs made there; PSNR as on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reports = {}
    for device in ("cpu", "cuda"):
        argv = ["invert", "--model", FACTORY, "--weights", str(trained["weights"])]
        argv += ["--split", "layer1", "--images", str(orl["query"]), "--aux", str(orl["aux"])]
        argv += ["--method", method, "--steps", "30", "--no-identity", "--device", device]
        argv += ["--defense", "noise:0.5", "--out", str(tmp_path / device)]
        assert main(argv) == 0
        reports[device] = json.loads((tmp_path / device / "report.json").read_text())
    assert reports["cuda"]["device"].startswith("cuda")
    cpu, gpu = reports["cpu"]["splits"][0], reports["cuda"]["splits"][0]
    # Same seeds, other kernels: float differences compound over the steps.
    assert abs(cpu["psnr"] - gpu["psnr"]) < 1.0
    assert abs(cpu["defense"]["accuracy"] - gpu["defense"]["accuracy"]) <= 0.2
