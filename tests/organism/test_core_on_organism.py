"""The core verbs on the shipped organism, in the order a notebook uses them (regression: steering right after
discovery, batched and single)."""
import numpy as np
import pytest

import gazekit
from gazekit.comics import synthetic


@pytest.fixture(scope="module")
def vlm():
    return gazekit.load()


def test_discover_then_steer_batched_and_single(vlm):
    scores = gazekit.discover(vlm, synthetic(4, seed=321), progress=False)
    heads = scores.top(vlm.recommended_k)
    strips = synthetic(3, seed=654)
    plain = vlm.ask_batch(strips, [gazekit.VQA_QUESTION] * 3, max_new_tokens=4)
    assert plain == [s.captions[s.main_panel - 1] for s in strips]
    target = 1 if strips[0].main_panel != 1 else 2
    with gazekit.steer(vlm, heads, target=target):
        batched = vlm.ask_batch(strips, [gazekit.VQA_QUESTION] * 3, max_new_tokens=4)
        single = [vlm.ask(s, gazekit.VQA_QUESTION, max_new_tokens=4) for s in strips]
    assert batched == single
    assert sum(a == s.captions[target - 1] for a, s in zip(batched, strips)) >= 2
    assert vlm._session is None and vlm.model.config.get_text_config()._attn_implementation == "sdpa"


def test_track_staircase_follows_narration(vlm):
    scores = gazekit.discover(vlm, synthetic(4, seed=321), progress=False)
    strip = synthetic(1, seed=987)[0]
    traj = gazekit.track(vlm, strip, gazekit.PANEL_BY_PANEL_PROMPT, scores.top(vlm.recommended_k),
                         max_new_tokens=30)
    assert traj.text.split(" . ") == strip.captions
    peaks = traj.argmax_region()
    words = [t.strip() for t in traj.tokens]
    panel, hits, n = 0, 0, 0
    for w, p in zip(words, peaks):
        if w == ".":
            panel += 1
            continue
        hits += int(p == panel)
        n += 1
    assert n >= 18 and hits / n >= 0.8
    assert traj.attention.shape == (len(traj.tokens), vlm.recommended_k, 6)
    assert np.all(traj.weighted.sum(-1) <= 1 + 1e-6)
