"""Idefics3 (and SmolVLM, which shares its layout): the image is cut into tiles plus a global thumbnail.

The processor resizes the whole image (longest edge to `size["longest_edge"]`, then each side up to a multiple of
the tile size — a stretch, never a crop), cuts it into rows x cols tiles, and adds the whole image squeezed into
one tile as a global thumbnail. The text then holds, per tile, `<fake_token_around_image><row_r_col_c>` followed by
g*g `<image>` tokens, and finally `<fake_token_around_image><global-img>` + g*g `<image>` tokens. Inside a tile the
pixel shuffle (scale_factor s) merges s x s patch blocks and keeps them row-major, so token k of a tile sits at
row k // g, column k % g of that tile (g = tile_size / patch_size / s). A small image (not larger than one tile)
gets only the global block.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from gazekit.models.adapters import Adapter, ImageCells, grid_centres, register

_ROW_COL = re.compile(r"^<row_(\d+)_col_(\d+)>$")


def _runs(pos: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted positions into runs of consecutive integers."""
    breaks = torch.nonzero(pos[1:] - pos[:-1] != 1).flatten() + 1
    return list(torch.tensor_split(pos, breaks.tolist()))


@register
class Idefics3Adapter(Adapter):
    """Idefics3 (`Idefics3ForConditionalGeneration`) and the base of the SmolVLM adapter.

    Args:
        model: the Idefics3 model.
        processor: its `Idefics3Processor`."""

    family = "idefics3"
    model_types = ("idefics3",)
    full_precision_modules = ("model.vision_model", "model.connector", "lm_head")
    region_note = ("Idefics3/SmolVLM: the image becomes rows x cols tiles (a stretch of the whole image, no crop) "
                   "plus a global thumbnail of the whole image; each tile and the thumbnail give g x g tokens, "
                   "row-major. A region's tokens are the tile tokens AND the thumbnail tokens whose cell centre "
                   "(mapped back to the original image) lies in the region's box.")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        """Each tile's g x g cells inside its tile box (from the `<row_r_col_c>` tag before it) and the global
        thumbnail's cells over the whole image.

        Args:
            inputs, row, scene, fed_size, offset: as for `Adapter.image_cells`."""
        pos = self._image_positions(inputs, row)
        ids = inputs["input_ids"][row]
        tok = getattr(self.processor, "tokenizer", self.processor)
        runs = _runs(pos.cpu())
        tags = [tok.convert_ids_to_tokens(int(ids[int(r[0]) - 1])) for r in runs]
        per = {int(r.numel()) for r in runs}
        g = int(math.isqrt(next(iter(per))))
        if len(per) != 1 or g * g != next(iter(per)):
            raise ValueError(f"{self.family}: expected equal square blocks of image tokens, got run lengths "
                             f"{[int(r.numel()) for r in runs]}")
        tiles = []
        for t in tags:
            m = _ROW_COL.match(str(t))
            if m:
                tiles.append((int(m.group(1)), int(m.group(2))))
            elif str(t) != "<global-img>":
                raise ValueError(f"{self.family}: an image-token block follows {t!r}, not a <row_r_col_c> or "
                                 "<global-img> tag; is this the model's own processor?")
        n_rows = max((r for r, _ in tiles), default=1)
        n_cols = max((c for _, c in tiles), default=1)
        W, H = scene.image.size
        centres = []
        for t in tags:
            m = _ROW_COL.match(str(t))
            if m:
                r, c = int(m.group(1)) - 1, int(m.group(2)) - 1
                box = (c * W / n_cols, r * H / n_rows, (c + 1) * W / n_cols, (r + 1) * H / n_rows)
            else:  # the global thumbnail: the whole image squeezed into one tile
                box = (0.0, 0.0, float(W), float(H))
            centres.append(grid_centres(g, g, box))
        return ImageCells(pos, np.concatenate(centres))
