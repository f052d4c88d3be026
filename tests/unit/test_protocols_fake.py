"""Protocols on a scripted fake VLM: dynamic schedules, boxes, k_sweep, results files."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))

from gazekit.evaluate import boxes, default_k, default_ks, dynamic, k_sweep, mentions, vqa  # noqa: E402
from gazekit.evaluate.protocols import Schedule, _segments, derangement  # noqa: E402


@pytest.fixture(scope="module")
def strips():
    from gazekit.comics import synthetic
    return synthetic(4, seed=5)


def test_derangement_has_no_fixed_point_and_is_seeded():
    seen = set()
    for s in range(300):
        p = derangement(6, random.Random(s))
        assert sorted(p) == [1, 2, 3, 4, 5, 6] and all(p[i] != i + 1 for i in range(6))
        seen.add(tuple(p))
    assert derangement(6, random.Random(7)) == derangement(6, random.Random(7))
    assert len(seen) > 150  # 265 derangements of 6 exist; 300 draws hit most of them


def test_schedule_switches_by_steps_and_by_caption():
    s = Schedule([3, 1, 2], every=2)
    assert [s(i, "x" * i) for i in range(7)] == [3, 3, 1, 1, 2, 2, None]
    assert s.record == [[0, 3, 0], [2, 1, 2], [4, 2, 4], [6, None, 6]]
    text = "aa bb cc dd"
    assert _segments(text, [[0, 3, 0], [2, 1, 3], [4, 2, 6]], [3, 1, 2], 2) == ["aa", "bb", "cc dd"]
    c = Schedule([2, 1], every=None)
    assert [c(0, ""), c(1, "red ball"), c(2, "red ball flies ."), c(3, "a . b ."), c(4, "a . b . c")] == \
        [2, 2, 1, None, None]
    assert Schedule([2, 1], every=0).every is None  # 0 means sentence mode, as in ScheduleBuilder
    assert Schedule([3, 1], every=2).steps() == {0: 3, 2: 1, 4: None}
    with pytest.raises(ValueError, match="sentence schedule"):
        c.steps()
    assert _segments("red ball flies . blue dot . extra words", None, [2, 1], None) == ["red ball flies .",
                                                                                        "blue dot ."]


@pytest.mark.parametrize("every", [None, 4])  # caption switching; and every 4 steps = one 4-word fake caption
def test_dynamic_on_fake(fake, strips, every):
    vlm, scores = fake
    res = dynamic(vlm, strips, scores, every=every, progress=False)
    t = res.table
    assert len(t) == len(strips) * (2 + 3) * 6  # unsteered, top, and the random control's 3 seeds
    top = t[t.condition == "top"]
    assert top["hit"].all()  # the idealised fake follows every switch
    assert res.extra["top@k4"]["spearman_pooled"] == pytest.approx(1.0)
    un = t[t.condition == "unsteered"]
    assert not un["hit"].any()  # it narrates in order; a derangement never targets panel j at segment j
    # unsteered: described panel j at segment j → pooled Spearman of (schedule, 1..6) over strips, by scipy directly
    sched = [json.loads(s) for s in un.drop_duplicates("strip")["schedule"]]
    expected = spearmanr(sum(sched, []), list(range(1, 7)) * len(sched)).statistic
    assert res.extra["unsteered"]["spearman_pooled"] == pytest.approx(expected)
    assert res.extra["random@k4"]["spearman_pooled"] == pytest.approx(expected)


def test_mentions():
    assert mentions("Two dogs play", "dog") and mentions("a bus", "bus") and mentions("buses", "bus")
    assert mentions("The traffic lights are red", "traffic light")
    assert not mentions("a category of things", "cat") and not mentions("a hotdog", "dog")
    assert mentions("some puppies", "dog", synonyms=["puppy"])


def test_boxes_on_fake(fake, strips):
    from gazekit.regions import Scene
    vlm, scores = fake
    scenes = [Scene(s.image, dict(zip(s.captions, s.panel_boxes))) for s in strips]
    res = boxes(vlm, scenes, scores, progress=False)
    s = res.summary().set_index("condition")
    assert s.loc["unsteered", "accuracy"] == pytest.approx(1 / 6)  # names only the first box
    assert s.loc["top", "accuracy"] == 1.0 and s.loc["random", "accuracy"] == pytest.approx(1 / 6)
    assert res.extra["top"]["lift"] == pytest.approx(6.0)
    assert res.metric == "mentioned" and set(res.table["target"]) == set(sum((sc.names for sc in scenes), []))


def test_k_sweep_and_default_k(fake, strips):
    vlm, scores = fake
    assert default_k(vlm) == 4
    assert default_ks(vlm) == [1, 2, 4, 5, 10, 16]
    res = k_sweep(vlm, strips[:2], scores, ks=[1, 2, 4], progress=False)
    s = res.summary()
    top = s[s.condition == "top"].set_index("k")["accuracy"]
    # the fake needs 2 of its gaze heads: K=1 behaves like unsteered (hits the default panel only)
    assert top[1] == pytest.approx(1 / 6) and top[2] == 1.0 and top[4] == 1.0
    rnd = s[s.condition == "random"]
    assert np.allclose(rnd["accuracy"], 1 / 6)


class Bare:
    name, n_layers, n_heads, recommended_k = "bare", 36, 32, None


def test_default_k_scales_the_papers_k():
    assert default_k(Bare()) == 100  # 1152 heads → the paper's K=100


def test_results_save_plot_markdown(fake, strips, tmp_path):
    vlm, scores = fake
    res = vqa(vlm, strips[:2], scores, progress=False)
    paths = res.save(tmp_path, stem="vqa")
    for key in ("table", "summary", "by_panel", "config", "plot"):
        assert Path(paths[key]).exists(), key
    import pandas as pd
    assert len(pd.read_csv(paths["table"])) == 2 * 6 * (3 + 3)  # 3 conditions + the control's 3 seeds
    md = res.to_markdown()
    assert "| top (K=4) | 12 | 100.0% [100.0, 100.0]" in md
    junk = 100 * res.table["junk"].mean()
    assert md.endswith(f"(judge: caption, n = 72, junk {junk:.1f}%)")  # every table names judge, n, junk rate
    ax = res.plot(by="panel")
    assert ax.get_xlabel() == "target panel"
    assert f"judge: caption, n = 72, junk {junk:.1f}%" in ax.get_title()  # and every figure
    by = res.by_panel()
    assert set(by["target"]) == set(range(1, 7)) and (by[by.condition == "top"]["accuracy"] == 1.0).all()


def test_errors(fake, strips):
    vlm, scores = fake
    with pytest.raises(ValueError, match="unknown condition"):
        vqa(vlm, strips, scores, conditions=("top", "bogus"), progress=False)
    with pytest.raises(ValueError, match="discover"):
        vqa(vlm, strips, None, progress=False)
    with pytest.raises(ValueError, match="1-based"):
        vqa(vlm, strips, scores, targets=[0], progress=False)
    res = vqa(vlm, strips[:1], None, conditions=("unsteered",), progress=False)  # no scores needed
    assert len(res.table) == 6


def test_llm_judge_failures_are_recorded_never_hits_and_retried_on_resume(fake, strips, tmp_path):
    """A judge outage: failed verdicts are logged, scored as misses, counted, and retried by the next run."""
    from types import SimpleNamespace

    from gazekit.judges import ClaudeJudge

    class Outage(Exception):
        status_code = 400  # not transient: no retry within the call

    class Client:
        def __init__(self, down):
            self.down, self.n = down, 0
            self.messages = SimpleNamespace(create=self.create)

        def create(self, **kw):
            self.n += 1
            if self.down:
                raise Outage("judge unavailable")
            answer = json.dumps(kw["messages"])
            strip = next(s for s in strips if any(c in answer for c in s.captions))
            panel = next(i + 1 for i, c in enumerate(strip.captions) if c in answer)
            return SimpleNamespace(content=[SimpleNamespace(type="tool_use",
                                                            input={"panel": panel, "junk": False, "reason": ""})])

    vlm, scores = fake
    log = tmp_path / "run.jsonl"
    down = ClaudeJudge(client=Client(down=True), sleep=lambda s: None)
    res = vqa(vlm, strips[:2], scores, conditions=("unsteered", "top"), judge=down, log=log, progress=False)
    assert res.table["failed"].all() and not res.table["hit"].any()
    assert res.summary().set_index("condition").loc["top", "judge_failures"] == 12
    calls = vlm.calls
    up = ClaudeJudge(client=Client(down=False), sleep=lambda s: None)
    res2 = vqa(vlm, strips[:2], scores, conditions=("unsteered", "top"), judge=up, log=log, progress=False)
    assert vlm.calls == calls  # generations reused
    assert up.client.n == 2 + 12  # every failed judgement retried once
    assert not res2.table["failed"].any() and res2.accuracy("top") == 1.0


def test_batched_generation_equals_one_at_a_time(fake, strips, tmp_path):
    """Strips of one image size go through ask_batch together; the results equal one-at-a-time generation,
    and a batch the model refuses (different layouts) falls back to single asks."""
    from PIL import Image

    from gazekit.regions import Strip
    vlm, scores = fake
    single = vqa(vlm, strips, scores, batch_size=1, progress=False)
    assert vlm.batches == []
    odd = Strip.from_panels([Image.new("RGB", (64, 256), c) for c in "red green blue white black gray".split()],
                            strips[0].captions)  # another size: a batch of its own
    odd.main_panel = 2
    n_calls = vlm.calls
    batched = vqa(vlm, strips + [odd], scores, batch_size=3, progress=False)
    # unsteered: 4 same-size strips in chunks of 3 + 1 (a chunk of one is a plain ask), the odd strip alone;
    # each steered condition (top, all, the random control's three seeds): its 6 targets x 4 same-size strips in
    # 8 chunks of 3 (rows with different targets together), the odd strip's 6 targets in 2 chunks of 3
    assert vlm.batches == [3] * (1 + 5 * (8 + 2))
    assert vlm.calls - n_calls == 3 + 5 * (8 + 2)
    cols = ["condition", "control_seed", "strip", "target", "answer", "hit"]
    b = batched.table[batched.table.strip_index < len(strips)]
    assert b[cols].sort_values(cols[:4]).reset_index(drop=True).equals(
        single.table[cols].sort_values(cols[:4]).reset_index(drop=True))


def test_batch_refused_falls_back(fake, strips, monkeypatch):
    vlm, scores = fake

    def refuse(*a, **k):
        raise ValueError("prepare_batch needs inputs of one length")

    monkeypatch.setattr(vlm, "ask_batch", refuse)
    res = vqa(vlm, strips[:3], scores, conditions=("unsteered", "top"), batch_size=8, progress=False)
    assert res.accuracy("top") == 1.0 and vlm.calls == 3 * 7


@pytest.mark.filterwarnings("ignore:the image-matched pool holds")
def test_control_pool_option_draws_from_the_named_pool(fake, strips):
    from gazekit.discover import GazeScores
    vlm, gaze = fake
    m = np.array(gaze.matrix, copy=True)
    m[1] += 0.1  # every layer-1 head now puts >= 0.6 of its attention on the image, evenly: image-matched pool
    scores = GazeScores.from_matrix(m, model_name=vlm.name, n_strips=1)
    res = vqa(vlm, strips[:1], scores, conditions=("random",), control_pool="image-matched", progress=False)
    rnd = res.table[res.table.condition == "random"]
    assert set(rnd["pool"]) == {"image-matched"} and rnd["control_seed"].nunique() == 3
    for seed in (0, 1, 2):  # each draw is exactly the sampler's, seed by seed
        drawn = scores.controls(4, pool="image-matched", seed=seed)
        heads = rnd[rnd.control_seed == seed]["heads"].iloc[0]
        assert sorted(map(tuple, json.loads(heads))) == sorted(map(tuple, drawn))
    default = vqa(vlm, strips[:1], scores, conditions=("random",), progress=False)
    assert set(default.table["pool"]) == {"below-median"}
    with pytest.raises(ValueError, match="control_pool must be one of"):
        vqa(vlm, strips[:1], scores, control_pool="bottom", progress=False)


def test_plots_name_what_they_count(fake, strips):
    import matplotlib.pyplot as plt
    vlm, scores = fake
    dyn = dynamic(vlm, strips[:2], scores, every=4, conditions=("unsteered", "top"), progress=False)
    ax = dyn.plot()
    assert ax.get_ylabel() == "segments describing the scheduled panel"
    assert not any("chance" in t.get_text() for t in ax.texts)  # a derangement's baseline is 0, not 1/6
    sweep = k_sweep(vlm, strips[:2], scores, ks=[1, 2], conditions=("unsteered", "top"), progress=False)
    ax = sweep.plot()
    junk = [line for line in ax.get_lines() if line.get_label().endswith(": junk answers")][0]
    s = sweep.summary()
    assert list(junk.get_ydata()) == list(s[s.condition == "top"].sort_values("k")["junk_rate"])
    plt.close("all")
