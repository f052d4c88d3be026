"""The shipped organism: loads through gazekit.load(), answers per-panel questions, and its gaze heads steer.

Held-out strips come from seeds never used in training (the recipe's own seed stream), discovery
(evaluate.DISCOVERY_SEED) or choosing K (evaluate.VALIDATION_SEED). Small sizes for CI (< 1 min on one thread).
"""
import os

import numpy as np
import pytest
import torch

import gazekit
from gazekit.comics import synthetic
from gazekit.organism import WEIGHTS_DIR, load_meta
from gazekit.organism.evaluate import caption_panel
from gazekit.regions import VQA_QUESTION, panel_question

HELD_OUT_SEED = 31337


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    return gazekit.load()


def test_loads_with_metadata(vlm):
    assert os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors"))
    assert vlm.family == "gazekit-organism" and (vlm.n_layers, vlm.n_heads) == (3, 16)
    k = load_meta()["recommended_k"]
    assert vlm.recommended_k == k and 1 <= k <= int(0.15 * vlm.n_layers * vlm.n_heads)
    size = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR))
    assert size < 15e6


def test_per_panel_accuracy(vlm):
    strips = synthetic(15, seed=HELD_OUT_SEED)
    correct = []
    for k in range(1, 7):
        ans = vlm.ask_batch(strips, [panel_question(k)] * len(strips), max_new_tokens=5)
        correct += [caption_panel(a, s) == k for a, s in zip(ans, strips)]
    assert np.mean(correct) >= 0.90, np.mean(correct)


def test_top_k_steering_beats_random_k(vlm):
    scores = gazekit.discover(vlm, synthetic(20, seed=HELD_OUT_SEED + 1), progress=False)
    k = vlm.recommended_k
    strips = synthetic(12, seed=HELD_OUT_SEED + 2)
    base = vlm.ask_batch(strips, [VQA_QUESTION] * len(strips), max_new_tokens=5)

    def success(heads):
        hits = []
        for t in range(1, 7):
            with gazekit.steer(vlm, heads, t):
                ans = vlm.ask_batch(strips, [VQA_QUESTION] * len(strips), max_new_tokens=5)
            hits += [caption_panel(a, s) == t and a != b
                     for a, b, s in zip(ans, base, strips) if t != s.main_panel]
        return float(np.mean(hits))

    top = success(scores.top(k))
    rand = np.mean([success(list(scores.controls(k, percentile=50, seed=s))) for s in range(2)])
    print(f"top-{k} {top:.3f} random-{k} {rand:.3f}")
    assert top - rand >= 0.30, (top, rand)
