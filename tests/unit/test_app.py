"""The steering app's state logic without a browser (`gazekit.app.SteeringApp`), and `python -m gazekit app`'s
argument checks. What the app shows is compared with direct calls of the public API (`steer` + `ask`, the caption
judge); the browser test (tests/browser/test_steering_app.py) checks the same through Voilà and Chromium."""
from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("ipywidgets")
torch = pytest.importorskip("torch")

import gazekit  # noqa: E402
from gazekit import app as A  # noqa: E402
from gazekit.comics import synthetic  # noqa: E402
from gazekit.judges import CaptionJudge  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    return gazekit.load()


@pytest.fixture(scope="module")
def scores(vlm):
    return gazekit.discover(vlm, synthetic(8, seed=5), progress=False)


def _api_answer(vlm, strip, heads, target):
    q = gazekit.VQA_QUESTION
    if target is None:
        return vlm.ask(strip, q, max_new_tokens=15)
    with gazekit.steer(vlm, heads, target):
        return vlm.ask(strip, q, max_new_tokens=15)


def test_click_condition_and_k_follow_the_api(vlm, scores):
    app = A.SteeringApp(vlm, scores, seed=123, k=K)
    strip = app.strip
    assert strip.captions == synthetic(1, seed=123)[0].captions
    assert app.panel is None and app.target is None
    assert app.answer == _api_answer(vlm, strip, None, None) and "steering: none" in app.text
    png0 = app.png
    # six clickable panels; a click steers the top-K toward that panel
    assert len(app._panels.children) == 6
    app._panels.children[2].children[1].click()  # the "steer to panel 3" button, as the browser clicks it
    assert app.last_error is None and app.panel == 3 and app.target == 3
    assert app.answer == _api_answer(vlm, strip, scores.top(K), 3)
    assert f"top-{K} gaze heads toward panel 3" in app.text
    assert app.verdict == CaptionJudge()(app.answer, strip) and "judge: describes" in app.text
    assert app._panels.children[2].children[1].button_style == "danger" and app.png != png0
    app.click(5)
    assert app.answer == _api_answer(vlm, strip, scores.top(K), 5)
    # random control: K size-matched heads from at or below the median, steered to the same panel
    app.set(condition="random")
    assert app.answer == _api_answer(vlm, strip, scores.controls(K, seed=0), 5)
    assert f"{K} random heads toward panel 5" in app.text
    app.set(condition="top", k=K + 1)
    assert app.answer == _api_answer(vlm, strip, scores.top(K + 1), 5)
    # unsteered keeps the clicked panel but steers nothing; back to the first figure exactly
    app.set(condition="unsteered", k=K)
    assert app.panel == 5 and app.target is None and app.answer == _api_answer(vlm, strip, None, None)
    assert app.png == png0
    # the controls drive it as the page does
    app.condition_buttons.value = "top"
    assert app.target == 5 and app.answer == _api_answer(vlm, strip, scores.top(K), 5)


def test_new_strip_and_uploaded_panels(vlm, scores):
    app = A.SteeringApp(vlm, scores, seed=123, k=K).click(2)
    app.seed_box.value = 7
    app.seed_button.click()
    assert app.last_error is None and app.panel is None
    assert app.strip.captions == synthetic(1, seed=7)[0].captions
    assert app.answer == _api_answer(vlm, app.strip, None, None)
    # six uploaded files, ordered by name, make a strip without captions: no judge verdict
    src = synthetic(1, seed=9)[0]
    files = []
    for i, (x0, y0, x1, y1) in reversed(list(enumerate(src.panel_boxes))):
        buf = io.BytesIO()
        src.image.crop((int(x0), int(y0), int(x1), int(y1))).save(buf, format="PNG")
        files.append({"name": f"p{i + 1}.png", "content": memoryview(buf.getvalue())})
    app.load_uploads(files)
    assert app.strip.captions is None and app.panel is None
    app.click(4)
    assert app.answer == _api_answer(vlm, app.strip, scores.top(K), 4)
    assert app.verdict is None and "judge" not in app.text
    # five files: one clear error on the page, the shown strip is kept
    before = app.strip
    app._guard(lambda: app.load_uploads(files[:5]))
    assert "exactly 6 panel images" in app.status and app.strip is before


def test_bad_input_names_the_fix(vlm, scores):
    app = A.SteeringApp(vlm, scores, seed=1, k=K)
    with pytest.raises(ValueError, match="1-based"):
        app.click(7)
    with pytest.raises(ValueError, match="condition must be one of"):
        app.set(condition="all")
    with pytest.raises(ValueError, match="gaze scores"):
        A.SteeringApp(vlm, None)


def test_app_from_environment_reads_the_cli_config(vlm, scores, monkeypatch, tmp_path):
    path = scores.save(tmp_path / "ranking.json")
    monkeypatch.setenv(A.CONFIG_ENV, json.dumps({"heads": str(path), "seed": 42, "k": 3}))
    app = A.app_from_environment()
    assert app.k == 3 and app.strip.captions == synthetic(1, seed=42)[0].captions
    assert app.scores.top(3) == scores.top(3)


def test_cli_app_checks_arguments_then_serves_voila(monkeypatch, tmp_path):
    from gazekit.cli import main

    with pytest.raises(SystemExit, match="--heads .* does not exist"):
        main(["app", "--heads", str(tmp_path / "missing.json"), "--no-browser"])
    with pytest.raises(SystemExit, match="--discover-strips"):
        main(["app", "--discover-strips", "synthetic:x", "--no-browser"])
    with pytest.raises(SystemExit, match="--port"):
        main(["app", "--port", "0"])
    seen = {}
    monkeypatch.setattr(A.os, "execve", lambda exe, cmd, env: seen.update(cmd=cmd, env=env))
    assert main(["app", "--port", "8901", "--no-browser", "--seed", "5"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "voila", str(A.PAGE)] and A.PAGE.is_file()
    assert "--port=8901" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd
    cfg = json.loads(seen["env"][A.CONFIG_ENV])
    assert cfg["seed"] == 5 and cfg["model"] is None and cfg["discover_strips"] == A.DEFAULT_DISCOVER_STRIPS
