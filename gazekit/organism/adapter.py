"""The organism's family adapter: LLaVA-class weights, but its processor (`ComicTileProcessor`) encodes each panel
as its own 32 px tile, so a region's tokens are its tile's tokens.

Registered with gazekit's adapter registry when `gazekit.organism` is imported (gazekit's own `__init__` does), at a
priority above the LLaVA adapter, which serves the same model type: a LLaVA model with this processor is the
organism, with any other processor it is a LLaVA.
"""
from __future__ import annotations

import math

import numpy as np

from gazekit.models.adapters import Adapter, ImageCells, grid_centres, register
from gazekit.organism.processor import ComicTileProcessor


@register
class OrganismAdapter(Adapter):
    """The embedded comic organism: LLaVA-class, but its processor encodes each panel as its own tile.

    Args:
        model: the organism (a `LlavaForConditionalGeneration`).
        processor: its `ComicTileProcessor`."""

    family = "gazekit-organism"
    model_types = ("llava",)
    priority = 10  # above LlavaAdapter (0), which matches every llava model
    full_precision_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    region_note = ("gazekit organism: each panel (a Strip's panel box; for other images one of six equal columns) is "
                   "its own tile for the vision tower; a region's tokens are the tokens of the tiles whose 2x2 patch "
                   "centres fall in its box.")

    @classmethod
    def matches(cls, config, processor=None) -> bool:
        """A llava config with the organism's own processor.

        Args:
            config: the model's config.
            processor: the model's processor (None: not the organism, as far as can be told)."""
        return super().matches(config, processor) and isinstance(processor, ComicTileProcessor)

    @classmethod
    def check_processor(cls, processor) -> None:
        """Nothing to check: `ComicTileProcessor` cuts the tiles itself (it has no separate image processor).

        Args:
            processor: the organism's processor."""

    def tile_boxes(self, scene) -> list:
        """The pixel boxes cut into tiles: a Strip's panel boxes, else `n_tiles` equal columns.

        Args:
            scene: a Strip or Scene."""
        from gazekit.regions import Strip

        if isinstance(scene, Strip):
            return list(scene.panel_boxes)
        W, H = scene.image.size
        n = self.processor.n_tiles
        return [(i * W / n, 0.0, (i + 1) * W / n, float(H)) for i in range(n)]

    def build_inputs(self, images, prompts, scenes):
        """The processor's inputs with each row's tiles cut at its scene's boxes.

        Args:
            images, prompts, scenes: as for `Adapter.build_inputs`."""
        texts = [self.chat_text(p) for p in prompts]
        return self.processor(text=texts, images=images, tile_boxes=[self.tile_boxes(s) for s in scenes],
                              return_tensors="pt")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        """Each tile's 2 x 2 patch centres inside its box, tile after tile.

        Args:
            inputs, row, scene, fed_size, offset: as for `Adapter.image_cells`."""
        pos = self._image_positions(inputs, row)
        per = self.processor.tokens_per_tile
        g = int(math.isqrt(per))
        boxes = self.tile_boxes(scene)
        if pos.numel() != per * len(boxes):
            raise ValueError(f"organism: expected {per * len(boxes)} image tokens, found {pos.numel()}")
        centres = np.concatenate([grid_centres(g, g, b) for b in boxes])
        return ImageCells(pos, centres)
