"""``membership``'s default score catches a person seen once as well as one seen often.

The principle behind the default (``max``): a generator that memorised a
person may show them in one sample among many; a score that averages the
``top_m`` nearest samples dilutes that one sample with strangers' faces. The
generated set here is 150 real ORL photos of 15 other people plus photos 6-10
of s16 (seen often) and photo 4 of s17 (seen once); the queries are photos
1-3, other photos than the generated ones. Reference: 15 people (smallest p
1/16). Pixel encoder: on ORL, photos of one person are closer in pixels than
photos of two people (measured best 0.94 across people).
"""

from __future__ import annotations

import pytest

from trainleak.audits.membership import membership
from trainleak.config import EmbedConfig, MembershipConfig

from conftest import link_orl

OFTEN, ONCE = "s16", "s17"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("membership_default")
    link_orl(root / "gen", range(1, 16), range(1, 11), per_person=False)
    link_orl(root / "gen", range(16, 17), range(6, 11), per_person=False)
    link_orl(root / "gen", range(17, 18), range(4, 5), per_person=False)
    link_orl(root / "ids", range(16, 26), range(1, 4))
    link_orl(root / "ref", range(26, 41), range(1, 4))
    return root


def _run(scene, cache_dir, **kw):
    embed = EmbedConfig(encoder="pixel", workers=1, cache=str(cache_dir))
    config = MembershipConfig(embed=embed, n_boot=50, **kw)
    rows = membership(str(scene / "gen"), scene / "ids", scene / "ref", config=config)
    return {r["identity"]: r["p_value"] for r in rows.report["identities"]}


def test_default_catches_a_person_seen_once_and_one_seen_often(scene, cache_dir):
    assert MembershipConfig().score == "max"
    p = _run(scene, cache_dir)
    assert p[OFTEN] == pytest.approx(1 / 16) and p[ONCE] == pytest.approx(1 / 16)
    strangers = [v for k, v in p.items() if k not in (OFTEN, ONCE)]
    assert sum(v > 0.05 for v in strangers) >= 7  # 8 strangers: the negative control


def test_topm_loses_the_person_seen_once(scene, cache_dir):
    p = _run(scene, cache_dir, score="topm")
    assert p[OFTEN] == pytest.approx(1 / 16)
    assert p[ONCE] > 0.05  # the one sample is averaged with four strangers' photos
