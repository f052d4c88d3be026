"""Real-browser test of the local steering app: `python -m gazekit app` started on a free port, driven in Chromium.

The app runs exactly as a user starts it (the CLI becomes Voilà serving gazekit's packaged page), on the embedded
organism, with gaze heads discovered on 8 synthetic strips and synthetic strip 123 shown first. The test clicks
panel buttons and the head-condition buttons and checks that the answer shown is exactly what the Python API
answers for that setting, computed here in the test process with `gazekit.steer` + `vlm.ask`.

Needs Debian's Chromium and the pip packages voila and playwright (gazekit's [test] extra); skips, saying how to
enable it, without them. Network: Chromium resolves no host but 127.0.0.1 and a route aborts every other request.
Screenshots go to $GAZEKIT_ARTIFACTS/browser_app (default tmp/artifacts/browser_app; tmp/ is git-ignored).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.browser._support import (CHROMIUM, CHROMIUM_FLAGS, LOOPBACK, free_port, requirements_missing,
                                     served)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DISCOVER = ("synthetic:8:5", 8, 5)  # the app's --discover-strips, and the same as (n, seed) for the oracle
SEED, K = 123, 4


_MISSING = requirements_missing()
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def expected():
    """What the page must show, from the public API in this process (independent of the app and its widgets)."""
    import torch

    import gazekit
    from gazekit.comics import synthetic

    torch.set_num_threads(1)
    vlm = gazekit.load()
    scores = gazekit.discover(vlm, synthetic(DISCOVER[1], seed=DISCOVER[2]), progress=False)
    strip = synthetic(1, seed=SEED)[0]
    q = gazekit.VQA_QUESTION

    def answer(heads, target):
        if target is None:
            return vlm.ask(strip, q, max_new_tokens=15)
        with gazekit.steer(vlm, heads, target):
            return vlm.ask(strip, q, max_new_tokens=15)

    return {"none": answer(None, None), 3: answer(scores.top(K), 3), 5: answer(scores.top(K), 5),
            ("random", 5): answer(scores.controls(K, seed=0), 5)}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("steering_app")
    port = free_port()
    log = d / "app.log"
    cmd = [sys.executable, "-m", "gazekit", "app", "--no-browser", f"--port={port}", f"--seed={SEED}",
           f"--k={K}", f"--discover-strips={DISCOVER[0]}"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with served(cmd, cwd=d, env=env, log=log, port=port, what="`python -m gazekit app`") as url:
        yield url


@pytest.fixture
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(LOOPBACK) else r.abort())
        pg = ctx.new_page()
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        browser.close()
        assert not errors, errors


def test_clicking_a_panel_steers_the_answer(app_url, page, expected):
    # a steerable model answers differently per target (else no change could be seen)
    assert expected[3] != expected[5] != expected["none"], expected
    shots = Path(os.environ.get("GAZEKIT_ARTIFACTS", ROOT / "tmp" / "artifacts")) / "browser_app"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    page.goto(app_url)
    answer = page.locator(".gazekit-answer")
    info = page.locator(".gazekit-text")
    expect(answer).to_have_text(expected["none"], timeout=120_000)  # model loaded, heads found, page rendered
    expect(info).to_contain_text("steering: none")
    expect(page.locator(".gazekit-panels img")).to_have_count(6)
    print(f"app rendered after {time.monotonic() - t0:.1f} s")
    page.screenshot(path=shots / "01_unsteered.png")

    page.locator("button.gazekit-panel-3").click()
    expect(info).to_contain_text(f"top-{K} gaze heads toward panel 3")
    expect(answer).to_have_text(expected[3])
    expect(info).to_contain_text("judge: describes")
    # the clicked button turns red once the redraw (figure included) is done: screenshot the finished state
    expect(page.locator("button.gazekit-panel-3")).to_have_class(re.compile("mod-danger"))
    page.screenshot(path=shots / "02_panel3.png")

    page.locator("button.gazekit-panel-5").click()
    expect(info).to_contain_text(f"top-{K} gaze heads toward panel 5")
    expect(answer).to_have_text(expected[5])

    page.get_by_role("button", name="K random control heads").click()
    expect(info).to_contain_text(f"{K} random heads toward panel 5")
    expect(answer).to_have_text(expected[("random", 5)])

    page.get_by_role("button", name="unsteered", exact=True).click()
    expect(info).to_contain_text("steering: none")
    expect(answer).to_have_text(expected["none"])
    expect(page.locator("button.mod-danger")).to_have_count(0)
    page.screenshot(path=shots / "03_unsteered_again.png")
    print(f"test body took {time.monotonic() - t0:.1f} s; screenshots in {shots}")
