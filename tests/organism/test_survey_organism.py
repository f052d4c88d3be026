"""`gazekit.survey` on the embedded organism, loaded by name: its top-K gaze heads steer and the size-matched random
heads do not (held-out strips, beyond the 95% intervals), and the JSON report reads back."""
import pytest
import torch

import gazekit
from gazekit.comics import synthetic

HELD_OUT_SEED = 424242  # not the recipe's stream, nor discovery (100), validation (1000) or test (2000)


@pytest.fixture(scope="module")
def report():
    torch.set_num_threads(1)
    return gazekit.survey(["organism"], synthetic(20, seed=100), eval_strips=synthetic(6, seed=HELD_OUT_SEED),
                          n_eval=6, judge="exact", progress=False)


def test_organism_top_k_beats_random_and_unsteered(report):
    row = report["organism"]
    s = row["steering"]
    assert row["k"] == gazekit.load().recommended_k and s["top"]["n"] == 36 and s["random"]["n"] == 3 * 36
    assert s["top"]["ci_low"] > s["random"]["ci_high"]  # separated beyond the bootstrap intervals
    assert s["top"]["accuracy"] > s["unsteered"]["accuracy"] + 0.5
    assert s["random"]["accuracy_nondefault"] < 0.1  # random heads do not redirect
    assert s["unsteered"]["accuracy"] == pytest.approx(1 / 6, abs=0.02)  # names the cued panel: 1 target in 6


def test_organism_has_high_scoring_heads_where_it_steers(report):
    row = report["organism"]
    assert row["score"]["n_ge"] >= row["k"] and row["score"]["max"] > 0.9  # gaze heads exist ...
    assert row["score"]["q50"] < 0.5  # ... and are few: most heads look elsewhere
    assert all(h["score"] >= 0.5 for h in row["top_heads"])


def test_report_round_trips(report, tmp_path):
    back = gazekit.SurveyReport.load(report.save(tmp_path / "survey.json"))
    assert back.table.equals(report.table) and "| organism | 48 |" in back.to_markdown()
