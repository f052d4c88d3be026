"""`gazekit.survey` on the scripted fake VLM: errors on bad input, models given by name, the summary helpers."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakes import FakeVLM, fake_scores, install_fake_steer  # noqa: E402

import gazekit  # noqa: E402
from gazekit.comics import synthetic  # noqa: E402
from gazekit.evaluate.survey import relative_depth, score_summary  # noqa: E402

survey_mod = importlib.import_module("gazekit.evaluate.survey")  # the module (gazekit.evaluate.survey is the verb)
discover_mod = importlib.import_module("gazekit.discover")


@pytest.fixture
def fake(monkeypatch):
    """Fakes behind the survey's seams: steering, discovery (FakeVLM has no transformer) and loading by name."""
    install_fake_steer(monkeypatch)
    made, discovered = [], []

    def load(name, kwargs):
        vlm = FakeVLM()
        vlm.name = f"fake:{name}"
        made.append(name)
        return vlm

    def discover(vlm, strips, progress=True):
        discovered.append(vlm.name)
        return fake_scores(vlm)

    monkeypatch.setattr(survey_mod, "_load", load)
    monkeypatch.setattr(discover_mod, "discover", discover)
    return made, discovered


@pytest.fixture(scope="module")
def strips():
    return synthetic(4, seed=0)


def test_models_by_name_are_loaded_once_and_not_at_all_when_done(fake, strips, tmp_path):
    made, discovered = fake
    out = tmp_path / "s.jsonl"
    report = gazekit.survey(["a", "b"], strips, n_eval=1, judge="exact", progress=False, out=out)
    assert made == ["a", "b"] and discovered == ["fake:a", "fake:b"]
    row = report["a"]
    assert row["name"] == "fake:a" and row["k"] == FakeVLM.recommended_k
    # the fake steers exactly when >= 2 of its gaze heads are steered: top-4 always, random never
    assert row["steering"]["top"]["accuracy"] == 1.0 and row["steering"]["random"]["accuracy_nondefault"] == 0.0
    assert [h["relative_depth"] for h in row["top_heads"]] == [2 / 3, 2 / 3, 1.0, 1.0]
    made.clear()
    discovered.clear()
    again = gazekit.survey(["a", "b"], strips, n_eval=1, judge="exact", progress=False, out=out)
    assert made == [] and discovered == [] and again.rows == report.rows
    gazekit.survey(["a", "c"], strips, n_eval=1, judge="exact", progress=False, out=out)
    assert made == ["c"]  # only the new model


def test_labels_from_a_dict_and_k_as_a_share(fake, strips):
    report = gazekit.survey({"first": FakeVLM(), "second": "x"}, strips, k=0.25, n_eval=1, judge="exact",
                            progress=False)
    assert report.models == ["first", "second"]
    assert list(report.table["K"]) == [8, 8]  # a quarter of 32 heads


@pytest.mark.parametrize("models, strips_, kw, error, message", [
    ([], None, {}, ValueError, "at least one model"),
    (None, None, {}, ValueError, "at least one model"),
    ([3], None, {}, TypeError, r"models\[0\] is a int.*gazekit VLM"),
    ([""], None, {}, ValueError, "empty name"),
    (["a", "a"], None, {}, ValueError, "share the label"),
    ("fake", "synthetic:4:0", {}, TypeError, "gazekit.comics.synthetic"),
    ("fake", [1, 2], {}, TypeError, r"strips\[0\] is a int, not a gazekit Strip"),
    ("fake", None, {"n_eval": 4}, ValueError, "cannot hold out n_eval = 4"),
    ("fake", None, {"n_eval": 0}, ValueError, "n_eval must be an integer >= 1"),
    ("fake", None, {"eval_strips": "x"}, TypeError, "eval_strips must be a list of gazekit Strips"),
])
def test_bad_input_names_the_fix(fake, strips, models, strips_, kw, error, message):
    made, _ = fake
    with pytest.raises(error, match=message):
        gazekit.survey(models, strips if strips_ is None else strips_, progress=False, **kw)
    assert made == []  # checked before any model loads


def test_bad_k_and_same_named_models_fail_before_any_work(fake, strips):
    made, discovered = fake
    with pytest.raises(ValueError, match=r"K = 17 heads.*1 <= K <= 16"):
        gazekit.survey([FakeVLM()], strips, k=17, n_eval=1, progress=False)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        gazekit.survey([FakeVLM()], strips, k=1.5, n_eval=1, progress=False)
    with pytest.raises(TypeError, match="k must be None"):
        gazekit.survey([FakeVLM()], strips, k="7", n_eval=1, progress=False)
    with pytest.raises(ValueError, match="both named"):
        gazekit.survey({"x": FakeVLM(), "y": FakeVLM()}, strips, n_eval=1, progress=False)
    assert made == [] and discovered == []


def test_eval_strips_overlapping_discovery_warns(fake, strips):
    with pytest.warns(UserWarning, match="not held out"):
        gazekit.survey([FakeVLM()], strips, eval_strips=strips[:1], n_eval=1, judge="exact", progress=False)


def test_score_summary_and_depth_against_numpy():
    g = np.random.default_rng(0).uniform(size=(3, 5))
    s = score_summary(g)
    assert s["q10"] == np.quantile(g, 0.1) and s["q50"] == np.median(g) and s["q90"] == np.quantile(g, 0.9)
    assert s["n_ge"] == int((g >= 0.5).sum()) and s["share_ge"] == s["n_ge"] / 15 and s["max"] == g.max()
    assert relative_depth(0, 4) == 0 and relative_depth(3, 4) == 1 and relative_depth(0, 1) == 0
    with pytest.raises(ValueError, match="outside"):
        relative_depth(4, 4)


def test_survey_is_a_top_level_verb_that_import_gazekit_does_not_load():
    import subprocess
    code = ("import importlib, sys, gazekit; assert 'gazekit.evaluate' not in sys.modules; "
            "from gazekit import survey, SurveyReport; m = importlib.import_module('gazekit.evaluate.survey'); "
            "assert survey is m.survey and gazekit.SurveyReport is m.SurveyReport; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
