"""GazeScores on synthetic matrices: ranking, controls, files (no model)."""
import json

import numpy as np
import pytest

from gazekit import GazeScores, Head


def _scores(L=4, H=8, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.uniform(0, 0.2, size=(L, H, 6, 6))
    m[2, 3] += np.eye(6) * 0.7  # one obvious gaze head
    m[3, 1] += np.eye(6) * 0.5
    return GazeScores.from_matrix(m, model_name="toy", n_strips=3)


def test_score_is_mean_diagonal_and_ranking_is_sorted():
    s = _scores()
    np.testing.assert_allclose(s.scores[1, 2], np.trace(s.matrix[1, 2]) / 6)
    assert s.top(2) == [Head(2, 3), Head(3, 1)]
    ranked = [s.scores[h] for h in s.ranking()]
    assert ranked == sorted(ranked, reverse=True)
    assert str(Head(2, 3)) == "L2.H3"


def test_controls_are_drawn_below_the_median_and_widen_only_for_large_k():
    s = _scores()  # 32 heads
    c = s.controls(4, seed=0)
    assert len(c) == 4 and len(set(c)) == 4 and not set(c) & set(s.top(4))
    assert c.pool == "below-median" and c.pool_size == 16 and all(s.scores[h] <= np.median(s.scores) for h in c)
    assert s.controls(4, seed=0) == c and s.controls(4, seed=1) != c  # seeded, and seeds differ
    with pytest.warns(UserWarning, match="drawing from all 20 heads outside the top 12"):
        wide = s.controls(12, seed=0)  # 16 below the median < 2k: every head outside the top 12
    assert wide.pool == "outside-top-k" and wide.pool_size == 20 and not set(wide) & set(s.top(12))


def test_image_matched_control_looks_at_the_image_but_not_at_the_asked_panel():
    m = np.zeros((2, 8, 6, 6))
    m[0, 0] = m[0, 1] = np.eye(6) * 0.9  # two gaze heads: image share 0.9, score 0.9
    for h, bonus in zip(range(2, 8), [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]):
        m[0, h] = np.full((6, 6), 0.9 / 6) + np.eye(6) * bonus  # look at the image, spread over the panels
    m[1] = np.full((8, 6, 6), 0.05 / 6)  # ignore the image: the lowest gaze scores of all
    s = GazeScores.from_matrix(m)
    np.testing.assert_allclose(s.image_share()[0, 2:], 0.9 + np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05]))
    np.testing.assert_allclose(s.image_share()[1], 0.05)
    # looking heads outside the top 2: L0.H2..H7; their median score lies between H4 and H5 -> pool H2, H3, H4
    with pytest.warns(UserWarning, match="holds 3 heads, fewer than 2k = 4"):
        c = s.controls(2, pool="image-matched", seed=0)
    assert c.pool == "image-matched" and c.pool_size == 3 and len(c) == 2
    assert set(c) <= {Head(0, 2), Head(0, 3), Head(0, 4)}
    assert "image share >= 0.5" in c.description
    with pytest.raises(ValueError, match="too few for 4 image-matched heads"):
        s.controls(4, pool="image-matched", seed=0)
    with pytest.raises(ValueError, match="no 6x6 matrices"):
        GazeScores(matrix=None, scores=s.scores).image_share()


def test_save_load_roundtrip_and_reference_json(tmp_path):
    s = _scores()
    p = s.save(tmp_path / "ranking.json")
    rows = json.loads(p.read_text())
    assert rows[0] == {"layer": 2, "head": 3, "score": pytest.approx(float(s.scores[2, 3]))}
    t = GazeScores.load(p)
    np.testing.assert_array_equal(t.matrix, s.matrix)
    assert t.model_name == "toy" and t.top(3) == s.top(3)
    # a bare reference ranking (no sidecar) loads too
    bare = tmp_path / "ref.json"
    bare.write_text(json.dumps(rows))
    r = GazeScores.load(bare)
    assert r.top(5) == s.top(5) and r.matrix is None


def test_load_rejects_ranking_of_another_model(tmp_path):
    class Fake:
        n_layers, n_heads, name = 5, 8, "other"

    p = _scores().save(tmp_path / "r.json")
    with pytest.raises(ValueError, match="run gazekit.discover on this model"):
        GazeScores.load(p, vlm=Fake())
    with pytest.raises(FileNotFoundError, match="discover"):
        GazeScores.load(tmp_path / "missing.json")


def test_top_k_range():
    with pytest.raises(ValueError, match="k must be"):
        _scores().top(0)
