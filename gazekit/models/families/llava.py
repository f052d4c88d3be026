"""LLaVA-1.5 (model_type "llava"): a CLIP vision tower whose patch grid (24 x 24 at 336 px) gives one token per patch,
row-major. Its processor resizes the shortest edge and centre-crops a square, which would cut a wide comic strip's
outer panels off: the adapter pads the image to a white square first, so nothing is cropped.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from gazekit.models.adapters import Adapter, ImageCells, grid_centres, refuse_lossy_crop, register


@register
class LlavaAdapter(Adapter):
    """LLaVA-1.5-class models (`LlavaForConditionalGeneration`).

    Args:
        model: the LLaVA model.
        processor: its `LlavaProcessor`."""

    family = "llava"
    model_types = ("llava",)
    full_precision_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    region_note = ("LLaVA-1.5: the image is padded to a square (white) so the processor's centre crop loses nothing; "
                   "the vision tower's patch grid (24x24 at 336 px) gives one token per patch, row-major; a token "
                   "belongs to the region whose box contains its patch centre; padding tokens belong to none.")

    def preprocess_image(self, image):
        """The image padded to a white square (centred), and the original's offset inside it.

        Args:
            image: the original image."""
        # the padding below makes a square, so only a crop smaller than the resize can still lose pixels
        refuse_lossy_crop(getattr(self.processor, "image_processor", None), square_input=True)
        W, H = image.size
        S = max(W, H)
        if W == H:
            return image, (0.0, 0.0)
        canvas = Image.new("RGB", (S, S), (255, 255, 255))
        dx, dy = (S - W) // 2, (S - H) // 2
        canvas.paste(image, (dx, dy))
        return canvas, (float(dx), float(dy))

    def image_cells(self, inputs, row, scene, fed_size, offset):
        """Patch-grid centres over the padded square, shifted back into the original image.

        Args:
            inputs, row, scene, fed_size, offset: as for `Adapter.image_cells`."""
        pos = self._image_positions(inputs, row)
        n = pos.numel()
        g = int(math.isqrt(n))
        if g * g != n:
            if int(math.isqrt(n - 1)) ** 2 == n - 1:  # vision_feature_select_strategy="full" keeps the CLS token
                pos, g = pos[1:], int(math.isqrt(n - 1))
            else:
                raise ValueError(f"LLaVA adapter expects a square patch grid, got {n} image tokens")
        S = fed_size[0]
        centres = grid_centres(g, g, (0, 0, S, S)) - np.array(offset)
        return ImageCells(pos, centres)
