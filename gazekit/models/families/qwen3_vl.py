"""Qwen3-VL: the Qwen2-VL image-token layout with 16 px patches (32 px per merged token); deepstack features are
added to the same image-token positions, so regions are unchanged."""
from __future__ import annotations

from gazekit.models.adapters import register
from gazekit.models.families.qwen2_vl import Qwen2VLAdapter


@register
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (`Qwen3VLForConditionalGeneration`): the Qwen2-VL layout;
    everything but the names comes from `Qwen2VLAdapter`.

    Args:
        model: the model.
        processor: its processor."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    region_note = ("Qwen3-VL: one image, resized (aspect kept, no crop) to multiples of 32 px; each image token is a "
                   "2x2 block of 16 px patches, row-major over image_grid_thw (deepstack adds vision features at the "
                   "same positions); a token belongs to the region containing its block centre.")
