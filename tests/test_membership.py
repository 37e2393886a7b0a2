"""``membership``: identity attack on a real memorizing generator, loss attack on a real DDPM.

The identity generator is a pixel-space KDE fitted on photos 1-7 of ORL
people s1-s10 (``tests/membership_gen.py``); the queries are held-out photos
8-10, so the attack must recognise people, not copies. The loss attack runs on
a small DDPM trained here on four ORL photos.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainleak.audits.loss_attack import LossAttack, LossConfig, loss_membership
from trainleak.audits.membership import (
    IdentityMembership,
    MembershipConfig,
    identity_scores,
    membership,
)
from trainleak.audits.sampling import stream_embed
from trainleak.cli import main
from trainleak.config import EmbedConfig
from trainleak.embedding import Embedder
from trainleak.errors import AuditInputError
from trainleak.generators import PythonGenerator, get_generator, materialise

from conftest import COIL, ORL, link_orl

KDE = "python:membership_gen:orl_kde"
MEMBERS = range(1, 11)
NONMEMBERS = range(11, 26)
REFERENCE = range(26, 41)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("membership")
    link_orl(root / "ids", range(1, 26), range(8, 11))
    link_orl(root / "ref", REFERENCE, range(8, 11))
    (root / "members.txt").write_text(
        "# the KDE's training people\n" + "\n".join(f"s{s}" for s in MEMBERS) + "\n"
    )
    return {"root": root, "ids": root / "ids", "ref": root / "ref"}


def _config(cache_dir: Path, n: int = 300) -> MembershipConfig:
    embed = EmbedConfig(encoder="pixel", workers=1, cache=str(cache_dir))
    return MembershipConfig(embed=embed, n_samples=n, n_boot=500, gen_batch_size=64)


@pytest.fixture(scope="module")
def kde_result(scene, cache_dir):
    members = {f"s{s}" for s in MEMBERS}
    return membership(KDE, scene["ids"], scene["ref"], members, config=_config(cache_dir))


def test_identity_attack_separates_members_of_a_memorizing_generator(kde_result):
    s = kde_result.report["summary"]
    assert s["n_members"] == 10 and s["n_nonmembers"] == 15
    assert s["auc"] > 0.9
    assert s["auc_ci95"][0] > 0.75 and s["auc_ci95"][0] <= s["auc"] <= s["auc_ci95"][1]
    assert s["tpr_at_fpr"]["0.01"] >= 0.3
    top10 = [r["member"] for r in kde_result.report["identities"][:10]]
    assert sum(top10) >= 8


def test_reference_p_values_are_uniformish_for_nonmembers(kde_result):
    rows = kde_result.report["identities"]
    p_non = np.sort([r["p_value"] for r in rows if r["member"] is False])
    p_mem = [r["p_value"] for r in rows if r["member"]]
    # Kolmogorov-Smirnov distance of 15 non-member p-values from uniform; the
    # 5% critical value for n = 15 is 0.34.
    n = len(p_non)
    ks = max(np.max(np.arange(1, n + 1) / n - p_non), np.max(p_non - np.arange(n) / n))
    assert ks < 0.34, p_non
    assert 0.25 < np.mean(p_non) < 0.75
    assert np.median(p_mem) <= 0.1


def test_report_contract(kde_result, tmp_path):
    paths = kde_result.write(tmp_path / "out")
    report = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    s = report["summary"]
    for key in ("auc", "auc_ci95", "tpr_at_fpr"):
        assert key in s
    assert set(s["tpr_at_fpr"]) == {"0.01", "0.001"}
    row = report["identities"][0]
    assert list(row)[:4] == ["identity", "score", "p_value", "member"]
    assert report["command"] == "membership" and report["tool"] == "trainleak"
    for key in ("version", "argv", "inputs", "skipped", "encoder", "generator"):
        assert key in report
    assert report["generator"]["streamed"] and report["generator"]["embedded"] == 300
    html = Path(paths["html"]).read_text(encoding="utf-8")
    assert "ROC curve" in html and "data:image/jpeg;base64" in html
    assert len(list((tmp_path / "out" / "closest").glob("*.png"))) > 0


def test_report_writer_never_runs_the_generator(scene, tmp_path, cache_dir, monkeypatch):
    import membership_gen

    monkeypatch.setitem(membership_gen.SEALED, "done", False)
    cfg = _config(cache_dir, n=40)
    cfg.n_boot = 10
    result = membership("python:membership_gen:sealed_orl_kde", scene["ids"], config=cfg)
    membership_gen.SEALED["done"] = True  # the audit is over: sampling now raises
    paths = result.write(tmp_path / "out")
    saved = sorted((tmp_path / "out" / "closest").glob("*.png"))
    top = result.report["identities"][0]
    assert len(saved) >= len(top["nearest"][:4]) > 0
    shown = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))["identities"][0]
    assert all(Path(n["path"]).is_file() for n in shown["nearest"][:4])
    # The saved image is the sample the audit scored: embedding it gives its similarity.
    with Embedder("pixel", workers=1, cache=False) as emb:
        closest = emb.embed(tmp_path / "out" / "closest", "closest")
        photos = emb.embed(scene["ids"] / top["identity"], "photos").vectors
    vec = closest.vectors[list(closest.paths).index(shown["nearest"][0]["path"])]
    assert float((photos @ vec).max()) == pytest.approx(top["nearest"][0]["similarity"], abs=1e-4)
    assert "data:image/jpeg;base64" in Path(paths["html"]).read_text(encoding="utf-8")


def test_scores_are_exact_against_brute_force(kde_result, scene, cache_dir):
    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    photos = {f"p{i}": unit(rng.normal(size=(rng.integers(1, 4), 16))) for i in range(7)}
    samples = unit(rng.normal(size=(50, 16))).astype(np.float32)
    got = identity_scores(photos, samples, top_m=4)
    for i, name in enumerate(got.names):
        best = np.sort((photos[name] @ samples.T).max(axis=0))[::-1]
        assert got.max[i] == pytest.approx(best[0], abs=1e-5)
        assert got.topm[i] == pytest.approx(best[:4].mean(), abs=1e-5)
    attack = IdentityMembership(samples, top_m=4).fit(photos)
    scores = attack.score(photos)
    assert attack.higher_is_better and scores.shape == (7,) and np.isfinite(scores).all()


def test_generator_adapters_give_identical_samples_for_a_seed(tmp_path, cache_dir):
    gen = PythonGenerator("membership_gen:orl_kde")
    a, b = gen.sample(6, seed=3), gen.sample(6, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    again = gen.sample_at([5, 1], seed=3)
    assert np.array_equal(again[0], a[5]) and np.array_equal(again[1], a[1])
    assert not all(np.array_equal(x, y) for x, y in zip(a, gen.sample(6, 4), strict=True))
    # Streaming: batch size changes nothing, and matches embedding the images from disk.
    with Embedder("pixel", workers=1, cache=False) as emb:
        s1 = stream_embed(gen, emb, 10, seed=3, batch_size=3)
        s2 = stream_embed(gen, emb, 10, seed=3, batch_size=7)
        for _ in materialise(gen, tmp_path / "gen", 10, seed=3):
            pass
        disk = emb.embed(tmp_path / "gen", "generated")
    assert np.array_equal(s1.vectors, s2.vectors)
    np.testing.assert_allclose(s1.vectors, disk.vectors, atol=1e-6)


def test_streamed_samples_are_cached_and_resume(tmp_path):
    gen = get_generator(KDE)
    with Embedder("pixel", workers=1, cache=tmp_path / "c") as emb:
        first = stream_embed(gen, emb, 12, seed=0, batch_size=4)
    with Embedder("pixel", workers=1, cache=tmp_path / "c") as emb:
        longer = stream_embed(gen, emb, 20, seed=0, batch_size=4)
    assert first.generated == 12 and longer.generated == 8
    assert np.array_equal(longer.vectors[:12], first.vectors)


def test_bad_identity_folders_are_reported_not_fatal(tmp_path, cache_dir):
    ids = link_orl(tmp_path / "ids", range(1, 3), range(8, 10))
    (ids / "empty_person").mkdir()
    (ids / "teapot").mkdir()
    os.symlink(COIL / "obj1__0.png", ids / "teapot" / "1.png")
    os.symlink(ids / "s1", ids / "alias")  # links to folders are not followed
    gen = link_orl(tmp_path / "gen", range(1, 2), range(1, 4), per_person=False)
    cfg = MembershipConfig(embed=EmbedConfig(workers=1, cache=str(cache_dir)), n_boot=10)
    result = membership(str(gen), ids, config=cfg)
    names = [r["identity"] for r in result.report["identities"]]
    assert names == ["s1", "s2"]  # s1 made the "generated" photos: it ranks first
    reasons = {Path(s["path"]).name: s["reason"] for s in result.report["skipped"]}
    assert reasons["empty_person"] == "identity left out: empty folder"
    assert "link to a folder" in reasons["alias"]
    assert "no face detected" in reasons["teapot"]
    assert result.report["summary"]["identities_skipped"] == [
        str(ids / "alias"),
        str(ids / "empty_person"),
        str(ids / "teapot"),
    ]


def test_cli_end_to_end_writes_the_contracted_report(scene, tmp_path, cache_dir):
    out = tmp_path / "report"
    argv = ["membership", "--generated", KDE, "--identities", str(scene["ids"])]
    argv += ["--members", str(scene["root"] / "members.txt"), "--reference", str(scene["ref"])]
    argv += ["--encoder", "pixel", "--n-samples", "120", "--workers", "1", "-q"]
    argv += ["--cache", str(cache_dir), "--out", str(out), "--bootstrap", "200"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["argv"][1:] == argv
    assert report["summary"]["auc"] > 0.8
    assert len(report["identities"]) == 25
    assert all(r["p_value"] is not None for r in report["identities"])
    assert (out / "report.html").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["membership", "--generated", "x", "--model", "diffusers:y"],
        ["membership", "--generated", "x"],
        ["membership", "--model", "y", "--candidates", "z"],
        ["membership", "--model", "diffusers:y", "--candidates", "z", "--timesteps", "a"],
        ["membership", "--generated", KDE, "--identities", "/nonexistent/ids"],
    ],
)
def test_cli_wrong_flags_exit_2_with_a_fix(argv, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "trainleak: error:" in capsys.readouterr().err


# -- the loss attack on a DDPM trained here on four ORL photos ---------------------------

TRAINED = [(1, 1), (2, 1), (3, 1), (4, 1)]


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from trainleak.ddpm import DDPMConfig, train_ddpm

    torch.set_num_threads(1)  # the tests share the machine; threads would only fight
    images = [np.asarray(Image.open(ORL / f"s{s}" / f"{p}.pgm").convert("RGB")) for s, p in TRAINED]
    cfg = DDPMConfig(size=16, channels=(16, 32), steps=400, batch_size=16, lr=2e-3)
    return train_ddpm(images, tmp_path_factory.mktemp("ddpm") / "pipe", cfg)


def test_loss_attack_separates_training_images(tiny_ddpm, tmp_path):
    cand = tmp_path / "cand"
    link_orl(cand, range(1, 5), range(1, 2))  # the four training photos
    link_orl(cand, range(5, 13), range(1, 2))  # eight photos it never saw
    ref = link_orl(tmp_path / "ref", range(13, 25), range(1, 2))
    members = {f"s{s}/{p}.pgm" for s, p in TRAINED}
    config = LossConfig(timesteps=(25, 100), noise_seeds=4, n_boot=300)
    result = loss_membership(f"diffusers:{tiny_ddpm}", cand, ref, members, config=config)
    s = result.report["summary"]
    assert s["n_members"] == 4 and s["n_nonmembers"] == 8
    assert s["auc"] >= 0.9 and s["auc_ci95"][0] > 0.6
    rows = result.report["samples"]
    assert [r["member"] for r in rows[:4]].count(True) >= 3
    assert all(0 < r["p_value"] <= 1 for r in rows)
    # Same seed, same numbers: the noise draws are fixed.
    attack = LossAttack(tiny_ddpm, config)
    image = [np.asarray(Image.open(ORL / "s1" / "1.pgm").convert("RGB"))]
    assert np.array_equal(attack.losses(image), attack.losses(image))
    assert attack.fit(None).score(image).shape == (1,)


def test_diffusers_adapter_is_seed_reproducible(tiny_ddpm):
    gen = get_generator(f"diffusers:{tiny_ddpm}", steps=4)
    a = gen.sample(3, seed=5)
    b = gen.sample_at([2, 0, 1], seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, [b[1], b[2], b[0]], strict=True))


def test_loss_cli_end_to_end(tiny_ddpm, tmp_path):
    cand = link_orl(tmp_path / "cand", range(1, 7), range(1, 2))
    (tmp_path / "members.txt").write_text("s1/1.pgm\ns2/1.pgm\ns3/1.pgm\ns4/1.pgm\ns99/1.pgm\n")
    argv = ["membership", "--model", f"diffusers:{tiny_ddpm}", "--candidates", str(cand)]
    argv += ["--members", str(tmp_path / "members.txt"), "--timesteps", "50", "--noise-seeds", "2"]
    argv += ["--out", str(tmp_path / "out"), "--bootstrap", "50", "--workers", "1"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert set(report["summary"]["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert list(report["samples"][0])[:4] == ["sample", "score", "p_value", "member"]
    assert report["summary"]["n_members"] == 4
    assert report["summary"]["members_unmatched"] == ["s99/1.pgm"]


def test_no_members_matched_is_an_error(tiny_ddpm, tmp_path):
    cand = link_orl(tmp_path / "cand", range(1, 3), range(1, 2))
    with pytest.raises(AuditInputError, match="no --members line"):
        loss_membership(f"diffusers:{tiny_ddpm}", cand, members={"nope.png"})
