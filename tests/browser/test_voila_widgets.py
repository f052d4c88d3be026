"""Real-browser test of `gazekit.widgets.TargetPicker`, served by Voilà on 127.0.0.1 and driven by Playwright.

The app is a three-cell notebook written at test time (so `pytest --nbval` never collects it): the embedded organism,
gaze scores from `gazekit.discover` on 8 synthetic strips, and a TargetPicker on another strip. The test changes the
target panel (and K) in Chromium and checks that the answer text shown is exactly what the Python API answers for
that setting (computed here, in the test process, with `gazekit.steer` + `ask`) and that the figure changes — and
returns to the identical PNG when the first state comes back.

Needs Debian's Chromium (`apt-get install chromium`; never `playwright install`), and the pip packages voila and
playwright (in gazekit's `test` extra). Without them the test skips and says how to enable it. Screenshots go to
$GAZEKIT_ARTIFACTS/browser (default: tmp/artifacts/browser in the repository; tmp/ is git-ignored).
Network: Chromium resolves no host but 127.0.0.1, and a Playwright route aborts every other request.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.browser._support import (CHROMIUM, CHROMIUM_FLAGS, LOOPBACK, free_port, requirements_missing,
                                     served)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
# the app, as notebook cells; the test recomputes the same things to know what the page must show
APP_STRIPS = "gazekit.comics.synthetic(8, seed=5)"
APP_STRIP = "gazekit.comics.synthetic(1, seed=123)[0]"
APP_K = 4
APP_CELLS = [
    "import torch\ntorch.set_num_threads(1)\nimport gazekit\nimport gazekit.comics\nfrom gazekit.widgets import TargetPicker",
    f"vlm = gazekit.load()\nscores = gazekit.discover(vlm, {APP_STRIPS}, progress=False)\nstrip = {APP_STRIP}",
    f"picker = TargetPicker(vlm, strip, scores, k={APP_K})\npicker",
]


_MISSING = requirements_missing()
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def expected():
    """What the page must show, from the public API in this process (an oracle independent of the widget)."""
    import torch

    import gazekit
    import gazekit.comics

    torch.set_num_threads(1)
    vlm = gazekit.load()
    scores = gazekit.discover(vlm, eval(APP_STRIPS, {"gazekit": gazekit}), progress=False)
    strip = eval(APP_STRIP, {"gazekit": gazekit})
    q = gazekit.VQA_QUESTION

    def answer(target, k=APP_K):
        if target is None:
            return vlm.ask(strip, q, max_new_tokens=15)
        with gazekit.steer(vlm, scores.top(k), target):
            return vlm.ask(strip, q, max_new_tokens=15)

    return {"none": answer(None), 3: answer(3), 5: answer(5), (5, APP_K + 1): answer(5, APP_K + 1)}


@pytest.fixture(scope="module")
def voila_url(tmp_path_factory):
    import nbformat

    d = tmp_path_factory.mktemp("voila_app")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in APP_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    app = d / "app.ipynb"
    nbformat.write(nb, app)
    port = free_port()
    log = d / "voila.log"
    voila = Path(sys.executable).parent / "voila"
    cmd = [str(voila if voila.exists() else "voila"), str(app), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--show_tracebacks=True"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.setdefault("OMP_NUM_THREADS", "1")
    with served(cmd, cwd=d, env=env, log=log, port=port, what="voila") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)  # fresh profile per launch
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    # second guard: abort every request that is not to loopback before it reaches the network
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOOPBACK) else route.abort())
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


@pytest.fixture
def shots():
    d = Path(os.environ.get("GAZEKIT_ARTIFACTS", ROOT / "tmp" / "artifacts")) / "browser"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


IMG = ".gazekit-figure img"


def _wait_new_image(page, old_src: str, timeout=30_000) -> str:
    """Wait for the figure of one redraw: the text updates before the Output's new PNG arrives."""
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel);"
                           " return i && i.src && i.src !== old; }", arg=[IMG, old_src], timeout=timeout)
    return page.locator(IMG).get_attribute("src")


def _wait_image_equals(page, src: str, timeout=30_000) -> None:
    page.wait_for_function("([sel, s]) => { const i = document.querySelector(sel); return i && i.src === s; }",
                           arg=[IMG, src], timeout=timeout)


def test_target_panel_changes_answer_and_figure(voila_url, page, shots, expected):
    # a steerable model gives different answers for different targets (else this test could not see a change)
    assert expected[3] != expected[5] != expected["none"], expected
    t0 = time.monotonic()
    page.goto(voila_url)
    answer = page.locator(".gazekit-answer")
    info = page.locator(".gazekit-text")
    img = page.locator(IMG)
    target = page.locator(".widget-dropdown", has=page.locator("label", has_text="target")).locator("select")
    k_handle = page.locator(".widget-slider .noUi-handle")

    expect(answer).to_have_text(expected["none"], timeout=120_000)  # kernel ran, model loaded, widgets rendered
    expect(info).to_contain_text("steering: none")
    src0 = img.get_attribute("src")
    assert src0 and src0.startswith("data:image/png;base64,")
    page.screenshot(path=shots / "01_unsteered.png")
    print(f"widgets rendered after {time.monotonic() - t0:.1f} s")

    target.select_option(label="panel 3")
    expect(answer).to_have_text(expected[3])
    expect(info).to_contain_text(f"top-{APP_K} gaze heads toward panel 3")
    src3 = _wait_new_image(page, src0)
    page.screenshot(path=shots / "02_panel3.png")

    target.select_option(label="panel 5")
    expect(answer).to_have_text(expected[5])
    src5 = _wait_new_image(page, src3)
    assert len({src0, src3, src5}) == 3
    page.screenshot(path=shots / "03_panel5.png")

    # K slider by keyboard: one key press = one more head = one redraw
    k_handle.focus()
    k_handle.press("ArrowRight")
    expect(info).to_contain_text(f"top-{APP_K + 1} gaze heads toward panel 5")
    expect(answer).to_have_text(expected[(5, APP_K + 1)])
    _wait_new_image(page, src5)
    page.screenshot(path=shots / "04_panel5_k_plus_1.png")

    # back to the first state: the PNG is deterministic, so it must be the identical image
    k_handle.press("ArrowLeft")
    expect(info).to_contain_text(f"top-{APP_K} gaze heads toward panel 5")
    _wait_image_equals(page, src5)
    target.select_option(label="no steering")
    expect(answer).to_have_text(expected["none"])
    _wait_image_equals(page, src0)
    page.screenshot(path=shots / "05_back_to_unsteered.png")
    print(f"test body took {time.monotonic() - t0:.1f} s; screenshots in {shots}")
