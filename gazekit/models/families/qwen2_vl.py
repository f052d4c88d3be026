"""Qwen2-VL (model_type "qwen2_vl"): one image, resized (aspect kept, no crop) to multiples of patch * merge; after
the spatial merge each image token covers a merge x merge block of patches, row-major over `image_grid_thw`. Text
positions are M-RoPE (three axes), so a suffix run on a cached prefix continues from the prefix's rope delta.
Qwen2.5-VL and Qwen3-VL subclass this adapter.
"""
from __future__ import annotations

import torch

from gazekit.models import _compat
from gazekit.models.adapters import Adapter, ImageCells, grid_centres, register


@register
class Qwen2VLAdapter(Adapter):
    """Qwen2-VL (`Qwen2VLForConditionalGeneration`) and the base of the later Qwen-VL adapters.

    Args:
        model: the Qwen-VL model.
        processor: its processor."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    full_precision_modules = ("model.visual", "lm_head")  # `visual` holds the vision blocks and the merger
    supports_packed_prompt = False  # M-RoPE positions of the image come from the model's own rope index
    region_note = ("Qwen2-VL family: one image, resized (aspect kept, no crop) to multiples of patch*merge; after "
                   "the spatial merge each image token covers a merge x merge block of patches, laid out row-major "
                   "over image_grid_thw; a token belongs to the region containing its block centre.")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        """Merged-block centres, row-major over `image_grid_thw`.

        Args:
            inputs, row, scene, fed_size, offset: as for `Adapter.image_cells`."""
        pos = self._image_positions(inputs, row)
        t, h, w = (int(v) for v in inputs["image_grid_thw"][row])
        m = int(getattr(self.processor.image_processor, "merge_size", 2))
        gh, gw = h // m, w // m
        if t * gh * gw != pos.numel():
            raise ValueError(f"{self.family}: {pos.numel()} image tokens but grid {t}x{gh}x{gw} after merge")
        W, H = scene.image.size
        return ImageCells(pos, grid_centres(gh, gw, (0, 0, W, H)))

    def suffix_inputs(self, prepared, common, suffix_ids, positions=None):
        """M-RoPE positions for the suffix: text after the image continues from the prefix's rope delta, on all
        three axes; no attention mask (see `Adapter.suffix_inputs` for the arguments)."""
        out = super().suffix_inputs(prepared, common, suffix_ids)
        out.pop("attention_mask")
        B, S = suffix_ids.shape
        delta = _compat.rope_deltas(self.model)
        if positions is None:
            positions = torch.arange(common, common + S)
        pos = positions.to(suffix_ids.device).view(1, 1, -1)
        pos = pos + delta.to(suffix_ids.device).view(1, -1, 1)[:, :1]
        n_axes = 3
        out["position_ids"] = pos.expand(n_axes, B, S)
        return out
