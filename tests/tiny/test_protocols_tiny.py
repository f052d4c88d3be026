"""The protocols through the real core (load, discover, steer) on a tiny random-weight Qwen2-VL.

The answers are gibberish (random weights); what is checked is the wiring: every condition generates under the
real steering context, the intervention spec is logged, resume regenerates nothing, and a dynamic schedule is
called by the real decoder at the decode steps it asks for (0 = first generated token)."""
import json

import pytest
import torch

import gazekit
from gazekit.evaluate import boxes, dynamic, vqa
from gazekit.evaluate.runlog import read_rows
from gazekit.judges import Verdict
from gazekit.regions import Scene, Strip
from gazekit import testing as tm


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, processor = tm.build("qwen2_vl")
    vlm = gazekit.load(model, processor)
    strips = []
    for i in range(2):
        s = tm.make_strip(seed=i)
        s = Strip(s.image, s.panel_boxes, [f"panel {k} of strip {i}" for k in range(1, 7)])
        s.id = f"tiny{i}"
        strips.append(s)
    scores = gazekit.discover(vlm, strips, progress=False)
    return vlm, strips, scores


def judge(answer, strip, refs=None):  # answers of a random model mean nothing: a constant judge
    return Verdict(1)


def test_vqa_wiring_and_resume(setup, tmp_path):
    vlm, strips, scores = setup
    log = tmp_path / "run.jsonl"
    res = vqa(vlm, strips[:1], scores, k=2, judge=judge, log=log, max_new_tokens=3, progress=False)
    assert len(res.table) == 6 * (4 + 2)  # the random control drawn for 3 seeds
    gens = [r for r in read_rows(log) if r["kind"] == "generation"]
    # a draw that repeats another seed's heads reuses its generations (same key): 8 heads, k = 2
    draws = {tuple(scores.controls(2, seed=s)) for s in range(3)}
    assert len(gens) == 1 + (2 + len(draws)) * 6
    top = next(r for r in gens if r["condition"] == "top")
    assert top["spec"]["heads"] == [list(h) for h in scores.top(2)] and top["spec"]["mode"] == "boost_suppress"
    rnd = next(r for r in gens if r["condition"] == "random")
    assert set(map(tuple, rnd["spec"]["heads"])).isdisjoint(map(tuple, scores.top(2)))
    assert next(r for r in gens if r["condition"] == "all")["spec"]["heads"] == "all"
    again = vqa(vlm, strips[:1], scores, k=2, judge=judge, log=log, max_new_tokens=3, progress=False)
    assert len(read_rows(log)) == len(gens) * 2  # one judgement per generation; nothing added on resume
    assert list(again.table["answer"]) == list(res.table["answer"])


def test_unsteered_condition_is_the_plain_answer(setup):
    vlm, strips, scores = setup
    plain = vlm.ask(strips[0], gazekit.VQA_QUESTION, max_new_tokens=6)
    res = vqa(vlm, strips[:1], scores, k=2, judge=judge, conditions=("unsteered",), max_new_tokens=6,
              progress=False)
    assert res.table["answer"].iloc[0] == plain


def test_dynamic_schedule_is_driven_by_the_real_decoder(setup):
    vlm, strips, scores = setup
    from gazekit.evaluate import RunLog
    log = RunLog()
    res = dynamic(vlm, strips[:1], scores, k=2, every=2, max_new_tokens=12, judge=judge, progress=False, log=log)
    order = json.loads(res.table["schedule"].iloc[0])
    for cond in ("unsteered", "top", "random"):
        row = next(r for r in log.rows() if r.get("kind") == "generation" and r["condition"] == cond)
        steps = [s for s, t, _ in row["switches"]]
        targets = [t for _, t, _ in row["switches"]]
        n = len(steps)  # generation may stop early at an end-of-text token
        assert n >= 1 and steps == [0, 2, 4, 6, 8, 10, 12][:n] and targets == (order + [None])[:n], row["switches"]
        chars = [c for _, _, c in row["switches"]]
        assert chars == sorted(chars) and chars[-1] <= len(row["answer"]) + 1
    assert len(res.table) == (3 + 2) * 6  # the random control drawn for 3 seeds


def test_boxes_on_a_scene(setup):
    vlm, strips, scores = setup
    s = strips[0]
    scene = Scene(s.image, {"left": s.panel_boxes[0], "right": s.panel_boxes[5]})
    res = boxes(vlm, [scene], scores, k=2, max_new_tokens=3, progress=False)
    assert len(res.table) == (3 + 2) * 2 and set(res.table["target"]) == {"left", "right"}  # control: 3 seeds


def test_batched_equals_single_through_the_real_core(setup):
    vlm, strips, scores = setup
    kw = dict(k=2, judge=judge, conditions=("unsteered", "top"), max_new_tokens=4, progress=False)
    one = vqa(vlm, strips, scores, batch_size=1, **kw)
    two = vqa(vlm, strips, scores, batch_size=2, **kw)
    assert list(one.table["answer"]) == list(two.table["answer"])
    assert (one.table["answer"] != one.table["unsteered_answer"]).any()  # steering did change something
