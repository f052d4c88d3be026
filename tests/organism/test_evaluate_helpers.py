"""The organism evaluation's judging helpers (pure functions, no model): the card judges with gazekit's exact
caption judge (`judge="exact"`), the one `gazekit.evaluate`'s protocols use."""
from types import SimpleNamespace

import pandas as pd

from gazekit.comics import synthetic
from gazekit.evaluate import Results
from gazekit.organism.evaluate import caption_panel, cued_accuracy, split_narration, steering_numbers

CAPS = ["red ball flies", "blue dot runs", "yellow sun swims", "black ball sleeps", "orange dot flies",
        "purple sun runs"]
STRIP = SimpleNamespace(captions=CAPS)


def test_judge_is_exact():
    assert caption_panel("blue dot runs", STRIP) == 2
    assert caption_panel("Blue dot runs.", STRIP) == 2      # case and punctuation do not matter
    assert caption_panel("blue ball runs", STRIP) is None   # wrong object word: a miss, not a near hit
    assert caption_panel("blue dot runs runs", STRIP) is None
    assert caption_panel("blue dot runs and more", STRIP) is None  # starting with a caption is not enough
    assert caption_panel("", STRIP) is None


def test_split_narration():
    assert split_narration("red ball flies . blue dot runs .") == ["red ball flies", "blue dot runs"]
    assert split_narration("") == []


def _row(cond, seed, strip, target, default, verdict, junk, hit, heads):
    return {"condition": cond, "k": None if cond == "all" else 2, "control_seed": seed, "strip_index": strip,
            "target": target, "default_panel": default, "nondefault": target != default, "verdict_panel": verdict,
            "junk": junk, "failed": False, "hit": hit, "answer": f"a{strip}{target}", "unsteered_answer": "u",
            "heads": heads, "pool": "below-median" if cond == "random" else None}


def test_steering_numbers_count_outcomes_of_non_default_pairs():
    top, all_ = '[[0, 1], [1, 2]]', '"all"'
    rows = [
        _row("unsteered", None, 0, 1, 1, 1, False, True, None), _row("unsteered", None, 0, 2, 1, 1, False, False, None),
        _row("top", None, 0, 1, 1, 1, False, True, top),       # the default target: not a non-default pair
        _row("top", None, 0, 2, 1, 2, False, True, top),       # success
        _row("top", None, 0, 3, 1, 1, False, False, top),      # still the default panel
        _row("top", None, 0, 4, 1, None, True, False, top),    # junk: malformed
        _row("top", None, 0, 5, 1, 6, False, False, top),      # another panel
        _row("random", 0, 0, 2, 1, 1, False, False, top), _row("random", 0, 0, 3, 1, 3, False, True, top),
        _row("random", 1, 0, 2, 1, None, True, False, '[[1, 1], [1, 3]]'),
        _row("random", 1, 0, 3, 1, 1, False, False, '[[1, 1], [1, 3]]'),
        _row("all", None, 0, 2, 1, None, True, False, all_), _row("all", None, 0, 3, 1, None, True, False, all_),
    ]
    res = Results("vqa", pd.DataFrame(rows), {"seed": 0})
    out = steering_numbers(res)
    t = out["top"]
    assert t["success"]["mean"] == 0.25 and t["success"]["n"] == 4 and t["success_all_pairs"]["mean"] == 0.4
    assert (t["success_rate"], t["default_rate"], t["malformed_rate"], t["other_rate"]) == (0.25, 0.25, 0.25, 0.25)
    assert t["n_heads"] == 2 and [e["target"] for e in t["examples"]] == [2, 3, 4]
    r = out["random"]
    assert r["n_sets"] == 2 and r["success"] == 0.25  # mean of the draws' 0.5 and 0.0
    assert r["default_rate"] == 0.5 and r["malformed_rate"] == 0.25
    assert r["success_ci_pooled"]["mean"] == 0.25 and r["success_ci_pooled"]["n"] == 4
    assert r["sets"][1]["heads"] == ["L1.H1", "L1.H3"]
    assert out["all"]["malformed_rate"] == 1.0 and out["all"]["n_heads"] == "all"


def test_cued_accuracy_reads_the_unsteered_rows():
    strips = synthetic(2, seed=0)
    rows = [_row("unsteered", None, i, t, p, p, False, t == p, None)
            for i, p in enumerate([strips[0].main_panel, 7 - strips[1].main_panel]) for t in range(1, 7)]
    c = cued_accuracy(Results("vqa", pd.DataFrame(rows), {"seed": 0}), strips, lambda s: s.main_panel)
    assert c["mean"] == 0.5 and c["n"] == 2
