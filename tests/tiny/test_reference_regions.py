"""Row 6 of docs/reference-parity.md: on a reference-style strip, gazekit's token-to-panel assignment equals the
reference's rule — merged-grid columns split in proportion to the panel widths, boundaries rounded — written out
here by hand, on a tiny Qwen3-VL whose processor resizes the strip (cells of ~100 px, not whole panels)."""
import numpy as np
import pytest
from PIL import Image

import gazekit
from gazekit import testing as tm


@pytest.mark.parametrize("widths", [[256, 384, 192, 512, 256, 384], [400, 148, 1000, 240, 320, 360],
                                    [300] * 6])
def test_reference_strip_regions_are_proportional_columns(widths):
    vlm = gazekit.load(*tm.build("qwen3_vl"))
    panels = [Image.new("RGB", (w, 256), (40 * i, 0, 0)) for i, w in enumerate(widths)]
    strip = gazekit.Strip.from_panels(panels, style="reference")
    prep = vlm.prepare(strip, "What is happening?")
    _, h, w = prep["image_grid_thw"][0].tolist()
    rows, cols = h // 2, w // 2  # Qwen merges 2 x 2 patches into one token
    panel_of = {p: r for r, pos in enumerate(prep.regions) for p in pos.tolist()}
    got = np.array([panel_of[p] for p in prep.image_positions.tolist()]).reshape(rows, cols)
    pw = [int(x1 - x0) for x0, _, x1, _ in strip.panel_boxes]
    cum = np.cumsum(pw)
    bounds = [0] + [int(round(cols * c / cum[-1])) for c in cum[:-1]] + [cols]
    want = np.concatenate([[k] * (bounds[k + 1] - bounds[k]) for k in range(6)])
    assert (got == want[None, :]).all()
