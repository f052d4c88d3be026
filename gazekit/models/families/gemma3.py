"""Gemma 3: one image squeezed to a fixed square (896 px in the real models; no crop, the aspect ratio is not kept),
SigLIP patches average-pooled to a g x g grid (g*g = mm_tokens_per_image, 16 x 16 in the real models), row-major,
between <start_of_image> and <end_of_image>.

Two things differ from the other families: image tokens attend to each other both ways (the text model's mask has a
bidirectional image block; the last prompt row is causal as usual), and most layers are sliding-window layers that
see only the last `sliding_window` keys (gazekit's attention function aligns biases and captured rows to the right).
"""
from __future__ import annotations

import math

from gazekit.models.adapters import Adapter, ImageCells, grid_centres, register


@register
class Gemma3Adapter(Adapter):
    """Gemma 3 (`Gemma3ForConditionalGeneration`).

    Args:
        model: the Gemma 3 model.
        processor: its `Gemma3Processor` (without pan-and-scan)."""

    family = "gemma3"
    model_types = ("gemma3",)
    full_precision_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    supports_packed_prompt = False  # image tokens attend to each other bidirectionally; a causal 4-D mask would not
    region_note = ("Gemma 3: the image is squeezed to a square (no crop), and its g x g pooled tokens (16 x 16 in the "
                   "real models) are row-major over the whole image; a token belongs to the region containing its "
                   "cell centre mapped back to the original image.")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        """The g x g pooled cells over the whole (squeezed) image, row-major.

        Args:
            inputs, row, scene, fed_size, offset: as for `Adapter.image_cells`."""
        pos = self._image_positions(inputs, row)
        n = pos.numel()
        expected = int(getattr(self.model.config, "mm_tokens_per_image", n))
        if n != expected:
            raise ValueError(f"gemma3: {n} image tokens, expected one image of {expected}: pan-and-scan crops and "
                             "several images are not supported; call the processor with do_pan_and_scan=False")
        g = int(math.isqrt(n))
        if g * g != n:
            raise ValueError(f"gemma3: expected a square grid of image tokens, got {n}")
        W, H = scene.image.size
        return ImageCells(pos, grid_centres(g, g, (0.0, 0.0, float(W), float(H))))
