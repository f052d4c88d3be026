"""track(style="reference") on the organism: the reference's decode-only trajectory, value weighting not
renormalised, set beside gazekit's default trajectory of the same generation."""
import numpy as np

import gazekit
from gazekit.comics import synthetic


def test_reference_trajectory_drops_the_prefill_row_and_keeps_a_times_v():
    vlm = gazekit.load()
    strip = synthetic(1, seed=3)[0]
    heads = [(2, 13), (2, 6), (1, 0)]
    ours = gazekit.track(vlm, strip, gazekit.PANEL_BY_PANEL_PROMPT, heads, max_new_tokens=12)
    ref = gazekit.track(vlm, strip, gazekit.PANEL_BY_PANEL_PROMPT, heads, max_new_tokens=12, style="reference")
    T = len(ours.tokens)
    assert ref.text == ours.text and len(ref.tokens) == T - 1 and ref.attention.shape[0] == T - 1
    assert ref.tokens == ours.tokens[:-1]  # row t reads generated token t
    np.testing.assert_allclose(ref.attention, ours.attention[1:], rtol=1e-6, atol=1e-9)
    # renormalising divides each (step, head) row of a * |v| by one number (its sum over every key): the
    # reference's weighted rows are gazekit's times a per-row constant, not the same numbers
    ratio = ref.weighted / np.where(ours.weighted[1:] > 1e-12, ours.weighted[1:], np.nan)
    per_row = np.nanmax(ratio, -1) / np.nanmin(ratio, -1)
    np.testing.assert_allclose(per_row[np.isfinite(per_row)], 1.0, rtol=1e-5)
    assert not np.allclose(ref.weighted, ours.weighted[1:])
