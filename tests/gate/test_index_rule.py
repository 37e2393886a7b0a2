"""An index keeps the comparison rule its encoder declares (tiles, mirror) across a reopen.

The rule is the encoder's declaration (EncoderInfo.tiles, .mirror), not something
inferred from its name; the manifest records it, and the mirror permutation comes
back from the registered encoder when the index is opened in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from trainleak.config import EmbedConfig, IndexConfig
from trainleak.encoders import get_encoder
from trainleak.gate.index import Index
from trainleak.similarity import Similarity

from conftest import COIL

OPEN_AND_CHECK = r"""
import json, sys
from trainleak.gate.index import Index
with Index.open(sys.argv[1]) as index:
    verdicts = index.check(sys.argv[2])
    print(json.dumps({
        "tiles": index.similarity.tiles,
        "mirror": None if index.similarity.mirror is None else index.similarity.mirror.tolist(),
        "verdicts": {v.path.rsplit("/", 1)[-1]: v.verdict for v in verdicts},
    }))
"""


def test_a_tiled_index_reopens_with_its_declared_rule(tmp_path):
    train, outbox = tmp_path / "train", tmp_path / "outbox"
    train.mkdir(), outbox.mkdir()
    for name in ("obj1__0.png", "obj2__0.png", "obj3__0.png", "obj4__0.png"):
        (train / name).write_bytes((COIL / name).read_bytes())
    # A mirror image of a training image (tiled is mirror-blind by default) and an unseen object.
    Image.open(COIL / "obj2__0.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        outbox / "mirrored.png"
    )
    (outbox / "unseen.png").write_bytes((COIL / "obj9__0.png").read_bytes())
    cfg = IndexConfig(embed=EmbedConfig("tiled", workers=1, no_cache=True))
    Index.build(tmp_path / "idx", train, config=cfg).close()
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["encoder"]["tiles"] == 16 and manifest["encoder"]["mirror"] is True

    out = subprocess.run(
        [sys.executable, "-c", OPEN_AND_CHECK, str(tmp_path / "idx"), str(outbox)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    declared = Similarity.of(get_encoder("tiled").info)
    assert seen["tiles"] == declared.tiles == 16
    assert declared.mirror is not None and seen["mirror"] == declared.mirror.tolist()
    assert seen["verdicts"] == {"mirrored.png": "block", "unseen.png": "release"}


def test_without_the_mirror_rule_the_mirror_image_is_not_the_same_picture(tmp_path):
    # The negative control of the test above: the declared rule is what finds the mirror.
    enc = get_encoder("tiled", flip_invariant=False)
    assert enc.info.mirror is None
    img = np.asarray(Image.open(COIL / "obj2__0.png").convert("RGB"))
    a, b = enc.encode(img), enc.encode(np.ascontiguousarray(img[:, ::-1]))
    blind = Similarity.of(get_encoder("tiled").info)
    plain = Similarity.of(enc.info)
    assert plain.pairwise(a, b)[0, 0] < enc.info.default_threshold
    mirrored = get_encoder("tiled")
    ma, mb = mirrored.encode(img), mirrored.encode(np.ascontiguousarray(img[:, ::-1]))
    assert blind.pairwise(ma, mb)[0, 0] > mirrored.info.default_threshold
