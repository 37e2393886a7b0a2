"""``tiled`` scores are similarities in (0, 1] (issue 24 item 5).

Version 2 scored ``1 - d`` of the tiled l2 distance ``d`` of standardised
pixels, which is about 1.4 for two unrelated pictures: distinct photos got
negative "similarities". Version 3 scores ``1 / (1 + d)``: identical images 1,
everything else in (0, 1), ranked exactly as by distance, and the default
operating point passes the same pairs as before (distance below 0.0624).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainleak.block_search import score_at_distance, score_to_distance
from trainleak.encoders import get_encoder
from trainleak.encoders.pixel import TILED_THRESHOLD
from trainleak.neighbors import knn

from conftest import ORL


@pytest.fixture(scope="module")
def orl_rows() -> np.ndarray:
    enc = get_encoder("tiled")
    paths = [ORL / f"s{s}" / f"{p}.pgm" for s in range(1, 9) for p in (1, 2)]
    return np.concatenate([enc.encode(np.asarray(Image.open(p).convert("RGB"))) for p in paths])


def _distances(rows: np.ndarray, tiles: int) -> np.ndarray:
    """The tiled l2 distance by its definition, float64, every pair."""
    t = rows.astype(np.float64).reshape(len(rows), tiles, -1)
    diff = t[:, None] - t[None, :]
    return np.sqrt((diff * diff).mean(-1)).max(-1)


def test_scores_are_similarities_in_0_1_ranked_as_distance(orl_rows):
    enc = get_encoder("tiled")
    assert enc.info.version >= 3 and enc.info.metric == "tiled_l2"
    n = len(orl_rows)
    # knn re-scores in float64: the scores of the search that audits and the gate run.
    top, idx = knn(orl_rows, orl_rows, n, metric="tiled_l2", tiles=enc.info.tiles)
    scores = np.empty((n, n))
    np.put_along_axis(scores, idx, top, axis=1)
    d = _distances(orl_rows, enc.info.tiles)
    assert np.allclose(np.diag(scores), 1.0, atol=1e-6)
    off = ~np.eye(n, dtype=bool)
    # Distinct photos (v2 gave these 1 - d, negative for d > 1: most of them here).
    assert (d[off] > 1).mean() > 0.5
    assert (scores[off] > 0).all() and (scores[off] < 1).all()
    np.testing.assert_allclose(scores, 1 / (1 + d), atol=1e-6)
    # A monotone map: each row's neighbours come in the order of their distance.
    for r in range(n):
        assert np.all(np.diff(d[r, idx[r]]) >= -1e-9)
    back = score_to_distance(scores[off], "tiled_l2")
    np.testing.assert_allclose(back, d[off], rtol=1e-5)


def test_the_default_passes_the_same_distances_as_before():
    """The documented default is the score of the old default's distance, 1 - 0.9376."""
    assert score_at_distance(0.0624, "tiled_l2") == TILED_THRESHOLD
    assert round(TILED_THRESHOLD, 4) == 0.9413
    assert round(score_to_distance(TILED_THRESHOLD, "tiled_l2"), 10) == 0.0624
    note = get_encoder("tiled").info.threshold_note
    assert "0.9413" in note and "1 / (1 + tiled l2 distance)" in note
    paper = get_encoder("tiled", normalise=False, blur=0)
    assert paper.info.default_threshold == pytest.approx(1 / 1.15)
