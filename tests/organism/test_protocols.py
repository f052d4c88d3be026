"""The paper's experiments on the embedded organism, through `gazekit.evaluate` and the command line.

Small held-out samples for CI (one thread). The assertions are the paper's ordering, not its numbers: top-K gaze
heads steer far above the size-matched random heads and the unsteered baseline (both near chance for the target
panel), and steering all heads destroys the answers (mostly junk). The organism's own numbers (larger samples) are
in its model card and in the README's results table.
"""
import json

import pytest
import torch

import gazekit
from gazekit.comics import synthetic
from gazekit.evaluate import dynamic, narration, vqa

HELD_OUT_SEED = 424242  # not the recipe's stream, nor discovery (100), validation (1000) or test (2000)
DISCOVERY_SEED = 100


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    vlm = gazekit.load()
    scores = gazekit.discover(vlm, synthetic(40, seed=DISCOVERY_SEED), progress=False)
    return vlm, scores, synthetic(16, seed=HELD_OUT_SEED)


def _acc(res, cond, nondefault=False):
    return res.accuracy(cond, nondefault=nondefault)


def test_vqa_ordering(setup):
    vlm, scores, strips = setup
    res = vqa(vlm, strips, scores, judge="exact", progress=False)
    s = res.summary().set_index("condition")
    top, rnd, base = _acc(res, "top"), _acc(res, "random"), _acc(res, "unsteered")
    assert base == pytest.approx(1 / 6, abs=0.02)  # the unsteered answer names the cued panel: right 1 in 6
    assert top > rnd + 0.15 and top > base + 0.15, s
    assert s.loc["top", "ci_low"] > s.loc["random", "ci_high"]  # separated beyond the 95% intervals
    assert _acc(res, "random", nondefault=True) < 0.1  # random heads do not redirect
    assert s.loc["all", "junk_rate"] > 0.8 and _acc(res, "all") < 0.1  # all heads: junk


def test_narration_ordering(setup):
    vlm, scores, strips = setup
    res = narration(vlm, strips[:10], scores, judge="exact", conditions=("unsteered", "top", "random"),
                    max_new_tokens=8, progress=False)
    assert _acc(res, "top", nondefault=True) > _acc(res, "random", nondefault=True) + 0.1


def test_dynamic_follows_the_schedule(setup):
    vlm, scores, strips = setup
    res = dynamic(vlm, strips[:8], scores, every=None, judge="exact", max_new_tokens=30, progress=False)
    top = res.extra[f"top@k{vlm.recommended_k}"]["spearman_pooled"]
    assert top > res.extra["unsteered"]["spearman_pooled"] + 0.3
    assert _acc(res, "top") > _acc(res, "random") + 0.1


def test_cli_vqa_end_to_end(setup, tmp_path):
    """One command writes the ranking, the JSONL log, the table, the summary and the figure."""
    from gazekit.cli import main
    vlm, scores, _ = setup
    ranking = tmp_path / "ranking.json"
    scores.save(ranking)
    rc = main(["vqa", "--strips", f"synthetic:4:{HELD_OUT_SEED}", "--heads", str(ranking), "--judge", "exact",
               "--out", str(tmp_path / "vqa"), "--no-progress"])
    assert rc == 0
    for f in ("run.jsonl", "vqa.csv", "vqa_summary.csv", "vqa_by_panel.csv", "vqa.png", "vqa_config.json"):
        assert (tmp_path / "vqa" / f).exists(), f
    rows = [json.loads(line) for line in (tmp_path / "vqa" / "run.jsonl").read_text().splitlines()]
    # unsteered once; top, all and the random control's 3 seeds on every target
    assert sum(r["kind"] == "generation" for r in rows) == 4 * (1 + 5 * 6)


def test_model_card_rows_are_the_protocols_numbers(setup):
    """The card's steering rows (`python -m gazekit.organism.evaluate`) read gazekit.evaluate's Results: no second
    protocol implementation."""
    from gazekit.organism.evaluate import static_steering, steering_numbers
    vlm, scores, strips = setup
    res = static_steering(vlm, strips[:4], scores, "vqa", vlm.recommended_k, n_random_sets=2)
    assert res.config["judge"] == "exact" and res.config["control_seeds"] == [0, 1]
    card = steering_numbers(res)
    assert card["top"]["success"]["mean"] == pytest.approx(res.accuracy("top", nondefault=True))
    assert card["top"]["success_all_pairs"]["mean"] == pytest.approx(res.accuracy("top"))
    assert card["random"]["success_ci_pooled"]["mean"] == pytest.approx(res.accuracy("random", nondefault=True))
    for arm in (card["top"], card["all"], *card["random"]["sets"]):
        shares = [arm[f"{k}_rate"] for k in ("success", "default", "malformed", "other")]
        assert sum(shares) == pytest.approx(1.0)
    assert card["top"]["success"]["mean"] > card["random"]["success"]  # the ordering the card shows
