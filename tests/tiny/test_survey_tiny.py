"""`gazekit.survey` through the real core on tiny random-weight models of two families (Qwen2-VL, LLaVA).

Random weights mean the numbers say nothing about gaze heads; what is checked is that the survey's numbers are the
core's numbers (an independent `discover` and `vqa` run give the same scores and accuracies), the table and JSON
have their structure, and a rerun with the same log does no forward pass at all — also after a crash mid-model."""
import json

import numpy as np
import pytest
import torch

import gazekit
from gazekit import testing as tm
from gazekit.evaluate import vqa
from gazekit.evaluate.runlog import read_rows
from gazekit.judges import Verdict
from gazekit.regions import Strip


def _strips(n, start=0):
    out = []
    for i in range(start, start + n):
        s = tm.make_strip(seed=i)
        s = Strip(s.image, s.panel_boxes, [f"panel {k} of strip {i}" for k in range(1, 7)])
        s.id = f"tiny{i}"
        out.append(s)
    return out


class Judge:
    """Answers of a random model mean nothing: a fixed verdict per answer (its length picks the panel), named so
    that its judgements are logged under a stable key; `fail_after` raises to simulate a crash."""

    name = "tiny-judge"

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, answer, strip, refs=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return Verdict(1 + len(answer) % 6)


@pytest.fixture(scope="module")
def models(qwen, llava):
    torch.set_num_threads(1)
    return {"qwen2_vl": qwen, "llava": llava}


class Forwards:
    """Counts forward calls of the language models (every discovery pass and every generation step runs one)."""

    def __init__(self, vlms):
        self.n = 0
        self.handles = [v.model.register_forward_pre_hook(self._hook) for v in vlms]

    def _hook(self, module, args):
        self.n += 1

    def remove(self):
        for h in self.handles:
            h.remove()


KW = dict(k=2, n_eval=1, max_new_tokens=2, progress=False)


def test_survey_numbers_are_the_cores(models, tmp_path):
    strips = _strips(3)
    report = gazekit.survey(models, strips, judge=Judge(), out=tmp_path / "s.jsonl", **KW)
    assert report.models == ["qwen2_vl", "llava"]
    t = report.table
    assert list(t["model"]) == ["qwen2_vl", "llava"] and len(t.columns) == 23
    for label, vlm in models.items():
        row = report[label]
        L, H = vlm.n_layers, vlm.n_heads
        assert (row["n_layers"], row["n_heads"], row["k"]) == (L, H, 2)
        # discovery: the held-out strip is not used; the scores equal an independent discover call
        oracle = gazekit.discover(vlm, strips[:2], progress=False)
        np.testing.assert_allclose(np.asarray(row["scores"]), oracle.scores, atol=1e-5)
        g = oracle.scores.ravel()
        assert row["score"]["q50"] == pytest.approx(np.median(g), abs=1e-6)
        assert row["score"]["q10"] == pytest.approx(np.quantile(g, 0.1), abs=1e-6)
        assert row["score"]["n_ge"] == int((g >= 0.5).sum()) and row["score"]["max"] == pytest.approx(g.max())
        assert [(h["layer"], h["head"]) for h in row["top_heads"]] == [tuple(h) for h in oracle.top(2)]
        assert [h["relative_depth"] for h in row["top_heads"]] == [h.layer / (L - 1) for h in oracle.top(2)]
        # steering: the same numbers as gazekit.evaluate.vqa on the held-out strip (no second protocol)
        res = vqa(vlm, strips[2:], oracle, k=2, conditions=("unsteered", "top", "random"), judge=Judge(),
                  max_new_tokens=2, progress=False)
        for cond in ("unsteered", "top", "random"):
            s = row["steering"][cond]
            assert s["accuracy"] == pytest.approx(res.accuracy(cond))
            assert s["ci_low"] <= s["accuracy"] <= s["ci_high"]
        assert row["steering"]["top"]["n"] == 6 and row["steering"]["random"]["n"] == 6 * 3  # 3 control draws
        assert t.set_index("model").loc[label, "top-K"] == pytest.approx(res.accuracy("top"))
    saved = json.loads(report.save(tmp_path / "s.json").read_text())
    assert saved["format"] == "gazekit-survey/1" and [m["model"] for m in saved["models"]] == report.models
    assert saved["config"]["eval_strips"] == ["tiny2"] and saved["config"]["n_discovery"] == 2
    back = gazekit.SurveyReport.load(tmp_path / "s.json")
    assert back.rows == json.loads(json.dumps(report.rows)) and back.table.equals(report.table)
    fig = report.plot()
    assert len(fig.axes) == 3 and all(ax.get_ylabel() for ax in fig.axes)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_rerun_with_the_same_log_runs_no_forward_pass(models, tmp_path):
    strips = _strips(3, start=10)
    out = tmp_path / "s.jsonl"
    first = gazekit.survey(models, strips, judge=Judge(), out=out, **KW)
    n_rows = len(read_rows(out))
    count = Forwards(models.values())
    try:
        again = gazekit.survey(models, strips, judge=Judge(), out=out, **KW)
        assert count.n == 0
        assert again.rows == first.rows and len(read_rows(out)) == n_rows  # nothing appended either
        # another K is another survey: it runs (and logs) again
        gazekit.survey(models, strips, judge=Judge(), out=out, **dict(KW, k=1))
        assert count.n > 0
    finally:
        count.remove()


def test_a_crash_mid_model_resumes_without_rediscovering(models, tmp_path):
    strips = _strips(3, start=20)
    out = tmp_path / "s.jsonl"
    one = {"qwen2_vl": models["qwen2_vl"]}
    with pytest.raises(RuntimeError, match="simulated crash"):
        gazekit.survey(one, strips, judge=Judge(fail_after=3), out=out, **KW)
    kinds = [r["kind"] for r in read_rows(out)]
    assert "discovery" in kinds and "survey" not in kinds  # discovery and the generations were logged
    count = Forwards(one.values())
    try:
        report = gazekit.survey(one, strips, judge=Judge(), out=out, **KW)
        assert count.n == 0  # every generation and the discovery came from the log; only judging was left
    finally:
        count.remove()
    fresh = gazekit.survey(one, strips, judge=Judge(), **KW)  # in memory, from scratch
    assert report.rows[0]["steering"] == fresh.rows[0]["steering"]
    np.testing.assert_allclose(report.rows[0]["scores"], fresh.rows[0]["scores"], atol=1e-5)
