"""Qwen2.5-VL: the Qwen2-VL image-token layout (one image, resized without cropping, merge x merge patch blocks
row-major over `image_grid_thw`), with a windowed vision encoder that restores the original token order."""
from __future__ import annotations

from gazekit.models.adapters import register
from gazekit.models.families.qwen2_vl import Qwen2VLAdapter


@register
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): the Qwen2-VL layout;
    everything but the names comes from `Qwen2VLAdapter`.

    Args:
        model: the model.
        processor: its processor."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    region_note = ("Qwen2.5-VL: as Qwen2-VL — one image, resized (aspect kept, no crop) to multiples of 28 px; each "
                   "image token is a 2x2 block of 14 px patches, row-major over image_grid_thw (the vision encoder's "
                   "window attention reorders patches internally and restores this order); a token belongs to the "
                   "region containing its block centre.")
