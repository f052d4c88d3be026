"""SmolVLM: Idefics3's classes renamed (model_type "smolvlm"); same tiles + global thumbnail token layout."""
from __future__ import annotations

from gazekit.models.adapters import register
from gazekit.models.families.idefics3 import Idefics3Adapter


@register
class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM (`SmolVLMForConditionalGeneration`): the Idefics3 layout;
    everything but the names comes from `Idefics3Adapter`.

    Args:
        model: the model.
        processor: its processor."""

    family = "smolvlm"
    model_types = ("smolvlm",)
    region_note = ("SmolVLM: as Idefics3 — rows x cols tiles plus a global thumbnail, g x g tokens each, row-major; "
                   "a region's tokens are the tile and thumbnail tokens whose cell centre lies in its box.")
