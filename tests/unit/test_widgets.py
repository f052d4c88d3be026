"""gazekit.widgets driven from code: set values, check what is shown against independent computations.

The model is the organism's real architecture (LLaVA class, 2 layers x 16 heads): the trained embedded weights when
they are installed, else the same architecture freshly initialised (seeded). Every check compares what a widget shows
with a direct call of the public API (`steer` + `ask`, `capture`, `track`) or with the input data, so it holds for
either set of weights; the one check that needs a *trained* model skips without the weights.
"""
from __future__ import annotations

import base64
import os

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
torch = pytest.importorskip("torch")

import gazekit  # noqa: E402
from gazekit import widgets as W  # noqa: E402
from gazekit.comics import synthetic  # noqa: E402
from gazekit.discover import GazeScores  # noqa: E402
from gazekit.judges import CaptionJudge  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trained_weights() -> bool:
    from gazekit.organism import WEIGHTS_DIR

    return os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors"))


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    if _trained_weights():
        return gazekit.load()
    from gazekit.organism.model import build_model
    from gazekit.organism.processor import ComicTileProcessor

    proc = ComicTileProcessor(patch_size=16)
    return gazekit.load(build_model(proc, seed=0).eval(), proc)


@pytest.fixture(scope="module")
def strips():
    return synthetic(4, seed=11)


@pytest.fixture(scope="module")
def scores(vlm, strips):
    return gazekit.discover(vlm, strips, progress=False)


def _shown_png(w) -> bytes:
    """The PNG bytes that the widget's Output actually carries to the front end."""
    (out,) = w._out.outputs
    return base64.b64decode(out["data"]["image/png"])


def _steered_answer(vlm, strip, heads, target, question, n):
    if target is None:
        return vlm.ask(strip, question, max_new_tokens=n)
    with gazekit.steer(vlm, heads, target):
        return vlm.ask(strip, question, max_new_tokens=n)


# ------------------------------------------------------------------------------------------------ HeadPicker
def _toy_scores():
    """2 layers x 3 heads; head (1, 2) is a perfect gaze head, (0, 1) looks at panel 1 whatever is asked."""
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 0.1, size=(2, 3, 6, 6))
    m[1, 2] = np.eye(6) * 0.9
    m[0, 1] = 0.0
    m[0, 1, :, 0] = 0.8
    return GazeScores.from_matrix(m, model_name="toy")


def test_head_picker_shows_the_chosen_heads_matrix_and_score():
    s = _toy_scores()
    hp = W.HeadPicker(s)
    assert hp.head == (1, 2)  # starts at the best head
    assert hp.rank == 1 and "L1.H2" in hp.text and "gaze score 0.90" in hp.text
    first = hp.png
    hp.select(0, 1)
    assert hp.head == (0, 1) and "L0.H1" in hp.text
    # score shown = mean of the diagonal computed here from the input matrix
    assert f"gaze score {np.trace(s.matrix[0, 1]) / 6:.2f}" in hp.text
    # rank = position among all heads sorted by score, computed independently
    order = np.argsort(-s.scores.ravel(), kind="stable")
    assert hp.rank == int(np.where(order == 0 * 3 + 1)[0][0]) + 1
    # the heatmap drawn is exactly that head's matrix
    mesh = hp.figure.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(6, 6), s.matrix[0, 1])
    assert hp.png.startswith(PNG_MAGIC) and _shown_png(hp) == hp.png and hp.png != first
    # the layer/head sliders are the widget's state
    assert (hp.layer_slider.value, hp.head_slider.value) == (0, 1)


def test_head_picker_menu_and_sliders_drive_it():
    s = _toy_scores()
    hp = W.HeadPicker(s, head=(0, 0))
    png00 = hp.png
    hp.head_slider.value = 2  # as a user dragging the slider
    assert hp.head == (0, 2) and "L0.H2" in hp.text
    hp.top_menu.value = s.top(1)[0]
    assert hp.head == (1, 2) and hp.rank == 1
    hp.select(0, 0)
    assert hp.png == png00  # the same head draws the same PNG


def test_head_picker_errors_name_the_fix():
    s = _toy_scores()
    with pytest.raises(ValueError, match="out of range"):
        W.HeadPicker(s).select(2, 0)
    with pytest.raises(ValueError, match="gazekit.discover"):
        W.HeadPicker(GazeScores(matrix=None, scores=s.scores))


def test_widgets_display_a_short_stable_text_form():
    hp = W.HeadPicker(_toy_scores())
    bundle = hp._repr_mimebundle_()
    assert bundle["text/plain"] == repr(hp) == "HeadPicker(L1.H2, score=0.90, rank=1/6)"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == hp.widget.model_id


# ---------------------------------------------------------------------------------------------- TargetPicker
def test_target_picker_answer_and_bars_match_the_api(vlm, strips, scores):
    strip = strips[0]
    tp = W.TargetPicker(vlm, strip, scores, k=4)
    q, n = tp.question, tp.max_new_tokens
    assert tp.target is None and tp.answer == vlm.ask(strip, q, max_new_tokens=n)
    assert "steering: none" in tp.text and tp.answer in tp.text
    png_none = tp.png
    for target in (3, 5):
        tp.set(target=target)
        heads = scores.top(4)
        assert tp.answer == _steered_answer(vlm, strip, heads, target, q, n)
        with gazekit.steer(vlm, heads, target):
            att = gazekit.capture(vlm, strip, q)
        expected = att[[h.layer for h in heads], [h.head for h in heads]].mean(0)
        np.testing.assert_allclose(tp.attention, expected, rtol=1e-6, atol=1e-9)
        bars = [p.get_height() for p in tp.figure.axes[1].patches[:6]]
        np.testing.assert_allclose(bars, expected, rtol=1e-6, atol=1e-9)
        # +B on the target's tokens saturates the softmax: the steered heads look (almost) only at the target
        assert int(np.argmax(tp.attention)) == target - 1 and tp.attention[target - 1] > 0.99
        assert f"toward panel {target}" in tp.text
        assert tp.verdict == CaptionJudge()(tp.answer, strip)
        assert _shown_png(tp) == tp.png and tp.png != png_none
    tp.set(target=None)
    assert tp.png == png_none  # back to the start state: identical figure


def test_target_picker_k_and_controls(vlm, strips, scores):
    strip = strips[1]
    tp = W.TargetPicker(vlm, strip, scores, k=2, target=2)
    q, n = tp.question, tp.max_new_tokens
    tp.set(k=6)
    assert tp.heads == scores.top(6) and "top-6 gaze heads" in tp.text
    assert tp.answer == _steered_answer(vlm, strip, scores.top(6), 2, q, n)
    tp.set(condition="random")
    ctrl = list(scores.controls(6, seed=0))
    assert tp.heads == ctrl and "6 random heads" in tp.text
    assert tp.answer == _steered_answer(vlm, strip, ctrl, 2, q, n)
    tp.condition_menu.value = "all"  # through the widget itself
    assert tp.heads == "all" and "all heads toward panel 2" in tp.text
    assert tp.answer == _steered_answer(vlm, strip, "all", 2, q, n)
    assert tp.k_slider.max == vlm.n_layers * vlm.n_heads // 2


def test_target_picker_fixed_heads_hide_k(vlm, strips):
    tp = W.TargetPicker(vlm, strips[0], heads=[(1, 0), (1, 1)], target=4)
    assert tp.heads == [(1, 0), (1, 1)] and tp.k_slider not in tp.widget.children[0].children
    assert tp.answer == _steered_answer(vlm, strips[0], [(1, 0), (1, 1)], 4, tp.question, tp.max_new_tokens)
    with pytest.raises(ValueError, match="scores"):
        W.TargetPicker(vlm, strips[0])


def test_a_failing_update_is_shown_not_swallowed(vlm, strips, scores):
    tp = W.TargetPicker(vlm, strips[0], scores, k=2)

    def boom(*a, **k):
        raise RuntimeError("model exploded")

    tp._run = boom
    tp.target_menu.value = 2  # observer path: the error goes to the widget
    assert isinstance(tp.last_error, RuntimeError) and "model exploded" in tp.text
    with pytest.raises(RuntimeError):  # code path: the error is raised
        tp.set(target=3)


@pytest.mark.skipif(not _trained_weights(), reason="needs the trained embedded organism (gazekit/organism/weights)")
def test_trained_organism_answers_follow_the_picked_panel(vlm):
    strip = synthetic(1, seed=123)[0]
    scores = gazekit.discover(vlm, synthetic(8, seed=5), progress=False)
    tp = W.TargetPicker(vlm, strip, scores)
    hits = 0
    for t in range(1, 7):
        tp.set(target=t)
        hits += tp.verdict is not None and tp.verdict.hit(t)
    assert hits >= 4, f"only {hits}/6 targets steered"


# ------------------------------------------------------------------------------------------- ScheduleBuilder
def test_schedule_builder_runs_the_schedule_it_shows(vlm, strips, scores):
    strip = strips[2]
    heads = scores.top(4)
    sb = W.ScheduleBuilder(vlm, strip, heads, order=[3, 1], every=2, max_new_tokens=6)
    assert sb.schedule == {0: 3, 2: 1, 4: None}
    assert "steps 0–1 → panel 3, steps 2–3 → panel 1" in sb._preview.value
    with gazekit.steer(vlm, heads, {0: 3, 2: 1, 4: None}):
        ref = gazekit.track(vlm, strip, sb.prompt, heads, max_new_tokens=6)
    assert sb.answer == ref.text and sb.trajectory.tokens == ref.tokens
    np.testing.assert_allclose(sb.trajectory.attention, ref.attention, rtol=1e-6, atol=1e-9)
    T = len(ref.tokens)
    assert sb.scheduled_targets() == [3, 3, 1, 1, None, None][:T]
    # under the schedule the steered heads look at the scheduled panel at every steered token
    am = sb.trajectory.argmax_region()
    for t, want in enumerate(sb.scheduled_targets()):
        if want is not None:
            assert am[t] == want - 1
    assert _shown_png(sb) == sb.png


def test_schedule_builder_menus_and_sentence_mode(vlm, strips, scores):
    sb = W.ScheduleBuilder(vlm, strips[0], scores.top(2), order=[2], every=3, max_new_tokens=6)
    sb.segment_menus[1].value = 5  # a user adds a second segment: auto-run
    assert sb.order == [2, 5] and sb.schedule == {0: 2, 3: 5, 6: None}
    sb.set(order=[4, 6, 1], every=0, run=False)
    sched = sb.schedule
    assert callable(sched) and sched(0, "") == 4 and sched(5, "red ball flies .") == 6 and sched(9, "a . b . c .") is None
    assert "sentence by sentence" in sb._preview.value
    sb.set(order=[])
    assert sb.schedule is None and "no steering" in sb._preview.value
    assert sb.answer == vlm.ask(strips[0], sb.prompt, max_new_tokens=6)
    with pytest.raises(ValueError, match="not one of"):
        W.ScheduleBuilder(vlm, strips[0], scores.top(2), order=[7], auto_run=False)


# ----------------------------------------------------------------------------------------------- BoxSelector
def test_box_selector_named_and_custom_boxes(vlm, strips, scores):
    img = strips[3].image
    Wd, H = img.size
    scene = gazekit.Scene(img, {"left": (0, 0, Wd // 3, H), "right": (2 * Wd // 3, 0, Wd, H)})
    heads = scores.top(4)
    q = "Describe this image briefly."
    bs = W.BoxSelector(vlm, scene, heads, prompt=q, max_new_tokens=8)
    assert bs.target == "left" and bs.unsteered_answer == vlm.ask(scene, q, max_new_tokens=8)
    assert bs.answer == _steered_answer(vlm, scene, heads, "left", q, 8)
    png_left = bs.png
    bs.select("right")
    assert bs.answer == _steered_answer(vlm, scene, heads, "right", q, 8) and "steered toward right" in bs.text
    assert bs.box == scene.region_boxes[1] and bs.x_range.value == (2 * Wd // 3, Wd)
    bs.set_box((40, 0, 300, 200))
    assert bs.target == (40.0, 0.0, 300.0, 200.0) and bs.box_menu.value == bs.CUSTOM
    assert bs.answer == _steered_answer(vlm, scene, heads, (40.0, 0.0, 300.0, 200.0), q, 8)
    assert "custom box (40, 0, 300, 200)" in bs.text
    bs.box_menu.value = "left"  # through the widget: sliders follow, one redraw
    assert bs.x_range.value == (0, Wd // 3) and bs.png == png_left and _shown_png(bs) == png_left
    with pytest.raises(ValueError, match="inside"):
        bs.set_box((0, 0, Wd + 10, 10))
    with pytest.raises(ValueError, match="no box named"):
        bs.select("middle")
