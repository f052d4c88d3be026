"""A scripted stand-in for a VLM, to test protocols, resume and sharding without any model.

`FakeVLM.ask` answers like an idealised steerable model: unsteered it gives the caption of the strip's main panel
(or of panel 1 for the narration prompt); steered with enough of its "gaze heads" it gives the target panel's
caption; steered with other heads it is unchanged; steered with all heads it babbles. A callable target (dynamic
schedules) is followed word by word. `install_fake_steer(monkeypatch)` replaces the protocols' steering seam.
"""
from __future__ import annotations

import contextlib

import numpy as np

from gazekit.regions import NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT


class FakeVLM:
    name = "fake-vlm"
    n_layers, n_heads = 4, 8
    recommended_k = 4

    def __init__(self, gaze_heads=((2, 1), (2, 5), (3, 0), (3, 6)), delay: float = 0.0):
        self.gaze_heads = {tuple(h) for h in gaze_heads}
        self.state = None  # (heads, target) while steered
        self.calls = 0  # model calls: one per ask or ask_batch
        self.batches = []
        self.delay = delay

    def _caption(self, item, k):
        return item.captions[k - 1] if getattr(item, "captions", None) else item.names[k - 1] if isinstance(k, int) \
            else k

    def ask_batch(self, items, prompts, max_new_tokens=20, **kw):
        """Like the real VLM: one steering state for the whole batch (or, with `RowTargets`, one target per row);
        refuses items of different sizes."""
        from gazekit.steer import RowTargets

        if len({it.image.size for it in items}) > 1:
            raise ValueError("images in one batch map their regions to different tokens")
        self.batches.append(len(items))
        calls = self.calls
        state = self.state
        per_row = state is not None and isinstance(state[1], RowTargets)
        if per_row and len(state[1]) != len(items):
            raise ValueError(f"{len(state[1])} row targets for {len(items)} rows")
        out = []
        try:
            for r, (it, p) in enumerate(zip(items, prompts)):
                if per_row:
                    self.state = (state[0], state[1][r])
                out.append(self.ask(it, p, max_new_tokens))
        finally:
            self.state = state
        self.calls = calls + 1
        return out

    def ask(self, item, prompt, max_new_tokens=20, **kw):
        if self.delay:
            import time
            time.sleep(self.delay)
        self.calls += 1
        if prompt == PANEL_BY_PANEL_PROMPT:
            caps = list(item.captions)
        elif prompt == NARRATION_PROMPT:
            caps = [item.captions[0]]
        elif prompt.startswith("Look carefully"):
            k = ["first", "second", "third", "fourth", "fifth", "sixth"].index(prompt.split(" the ")[1].split()[0]) + 1
            caps = [item.captions[k - 1]]
        elif getattr(item, "captions", None):
            caps = [self._caption(item, getattr(item, "main_panel", 1))]
        else:  # a Scene: unsteered, the fake names its first box
            caps = [f"a photo of a {item.names[0]}"]
        if self.state is None:
            return " . ".join(caps)
        heads, target = self.state
        if heads == "all":
            return "the the the the"
        steerable = len(self.gaze_heads & {tuple(h) for h in heads}) >= 2
        if callable(target):
            out = []
            for j in range(len(caps)):  # one caption per segment, words one decode step each
                text = " ".join(out)
                t = target(len(out), text)
                cap = self._caption(item, t) if (steerable and t is not None) else caps[j]
                out.extend(cap.split() + ["."])
            return " ".join(out)
        if not steerable or target is None:
            return " . ".join(caps)
        return self._caption(item, target)


def install_fake_steer(monkeypatch):
    from gazekit.evaluate import protocols

    @contextlib.contextmanager
    def fake_steer(vlm, heads, target, *, mode, strength, phase):
        assert vlm.state is None, "steering contexts must not leak"
        vlm.state = (heads if isinstance(heads, str) else [tuple(h) for h in heads], target)
        try:
            yield
        finally:
            vlm.state = None

    monkeypatch.setattr(protocols, "_steer", fake_steer)


def fake_scores(vlm: FakeVLM):
    """GazeScores where the fake's gaze heads score highest."""
    from gazekit.discover import GazeScores
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 0.05, size=(vlm.n_layers, vlm.n_heads, 6, 6))
    for i, (l, h) in enumerate(sorted(vlm.gaze_heads)):
        m[l, h] += np.eye(6) * (0.9 - 0.05 * i)
    return GazeScores.from_matrix(m, model_name=vlm.name, n_strips=1)
