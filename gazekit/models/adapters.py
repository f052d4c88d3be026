"""Family adapters: everything gazekit knows about one VLM family lives in one small class.

An adapter answers four questions for its family:
  1. where the language model's attention modules are (one per layer, index = layer),
  2. how to turn (image, prompt) into model inputs (chat template with the generation prompt, processor quirks),
  3. which sequence positions are image tokens, and where each one sits in the *original* image (its cell centre
     in image pixels) — the generic code in `gazekit.models.vlm` then assigns tokens to regions by which region box
     contains the centre,
  4. how to pre-process an image so that no region is lost (e.g. LLaVA centre-crops: we pad to a square instead).

Adding a family = one subclass here (or in `gazekit/models/families/<name>.py`, imported at the bottom of this
module) decorated with `@register`; see docs/adding-a-family.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

_REGISTRY: list[type["Adapter"]] = []


def register(cls: type["Adapter"]) -> type["Adapter"]:
    _REGISTRY.append(cls)
    return cls


def supported_families() -> list[str]:
    return sorted({c.family for c in _REGISTRY})


class UnsupportedModelError(ValueError):
    pass


@dataclass
class ImageCells:
    """Image-token positions of one input row and each token's cell centre (x, y) in original image pixels.

    Centres outside the image (e.g. tokens over padding) belong to no region."""

    positions: torch.Tensor  # LongTensor [N]
    centres: np.ndarray  # float [N, 2]


def _chat_messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


class Adapter:
    """Base class. Subclasses set `family`, `model_types` and override what differs."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Human-readable note: what counts as a region's tokens in this family.
    region_note: ClassVar[str] = ""
    #: whether the six panel questions may share an encoded image prefix (KV cache) in discovery
    supports_prefix_cache: ClassVar[bool] = True
    #: whether the six panel questions may share one forward, their suffixes packed after the prompt's common
    #: prefix under a custom 4-D mask with 1-D positions: needs plain causal attention over the prompt and 1-D
    #: rotary positions (not Qwen's M-RoPE, not Gemma 3's bidirectional image block)
    supports_packed_prompt: ClassVar[bool] = True

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    # -- recognition -------------------------------------------------------------------------------------------
    @classmethod
    def matches(cls, model, processor) -> bool:
        return getattr(model.config, "model_type", None) in cls.model_types

    # -- model structure ---------------------------------------------------------------------------------------
    @property
    def text_config(self):
        return self.model.config.get_text_config()

    def language_model(self):
        inner = getattr(self.model, "model", self.model)
        for name in ("language_model", "text_model"):
            if hasattr(inner, name):
                return getattr(inner, name)
        raise UnsupportedModelError(f"cannot find the language model inside {type(self.model).__name__}")

    def attention_modules(self) -> list[torch.nn.Module]:
        return [layer.self_attn for layer in self.language_model().layers]

    @property
    def n_layers(self) -> int:
        return len(self.attention_modules())

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        for name in ("image_token_id", "image_token_index"):
            v = getattr(cfg, name, None)
            if v is not None:
                return int(v)
        tok = getattr(self.processor, "tokenizer", self.processor)
        return int(tok.convert_tokens_to_ids(self.processor.image_token))

    # -- inputs ------------------------------------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> tuple[Image.Image, tuple[float, float]]:
        """Image handed to the processor, and the offset (dx, dy) of the original inside it. Refuses a processor
        whose centre crop would cut the image (a family that pads to a square overrides this)."""
        W, H = image.size
        _refuse_lossy_crop(getattr(self.processor, "image_processor", None), square_input=(W == H))
        return image, (0.0, 0.0)

    def chat_text(self, prompt: str) -> str:
        return self.processor.apply_chat_template(_chat_messages(prompt), add_generation_prompt=True, tokenize=False)

    def build_inputs(self, images: list[Image.Image], prompts: list[str], scenes) -> dict:
        texts = [self.chat_text(p) for p in prompts]
        # several prompts: one list of images per prompt (Gemma 3's and SmolVLM's processors refuse a flat list,
        # the others accept both)
        fed = images if len(images) == 1 else [[im] for im in images]
        return self.processor(text=texts, images=fed, return_tensors="pt", padding=True)

    def image_cells(self, inputs, row: int, scene, fed_size: tuple[int, int], offset) -> ImageCells:
        raise NotImplementedError

    def question_inputs(self, prepared, prompts) -> list:
        """For each of `prompts`, the token-aligned inputs (input_ids, attention_mask, token types) of that prompt
        asked about the images `prepared` holds (one prompt for all its rows) — without running the image
        processor again (None for a prompt where that cannot be done safely: prepare it normally). Discovery asks
        six questions of each strip; on a small model preparing the image six times costs more than the model.

        How: tokenize the chat texts with the image placeholder unexpanded; the old and a new text agree up to some
        token c after the image; `prepared`'s expanded ids end with the old text's tokens from c on (checked), and
        these are replaced by the new text's."""
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None or not callable(tok) or len(set(prepared.prompts)) != 1:
            return [None] * len(prompts)
        try:
            texts = [self.chat_text(p) for p in [prepared.prompts[0], *prompts]]
            old, *news = (list(x) for x in tok(texts, add_special_tokens=False)["input_ids"])
        except Exception:  # a tokenizer that cannot read the template text on its own
            return [None] * len(prompts)
        ids = prepared["input_ids"]  # [B, L]
        B, L = ids.shape
        aligned = {k: v for k, v in prepared.items() if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == L}
        last_image = int(prepared.image_positions.max())
        out = []
        for new in news:
            c = 0
            while c < min(len(old), len(new)) and old[c] == new[c]:
                c += 1
            tail_old, tail_new = old[c:], new[c:]
            cut = L - len(tail_old)
            if not tail_old or not tail_new or cut <= last_image:
                out.append(None)
                continue
            if not bool((ids[:, cut:] == torch.tensor(tail_old, dtype=ids.dtype, device=ids.device)).all()):
                out.append(None)
                continue
            row = {}
            for k, v in aligned.items():
                if k == "input_ids":
                    tail = torch.tensor(tail_new, dtype=ids.dtype, device=ids.device).expand(B, -1)
                    row[k] = torch.cat([ids[:, :cut], tail], dim=1)
                elif k == "attention_mask":
                    row[k] = torch.ones(B, cut + len(tail_new), dtype=v.dtype, device=v.device)
                else:  # token types: the new tail is text, typed like the old prompt's last token
                    row[k] = torch.cat([v[:, :cut], v[:, -1:].expand(B, len(tail_new))], dim=1)
            out.append(row)
        return out

    def suffix_inputs(self, prepared, common: int, suffix_ids: torch.Tensor, positions=None) -> dict:
        """Extra inputs for running `suffix_ids` [B, S] on a KV cache that holds the first `common` prompt tokens
        (discovery's shared-prefix path): an attention mask over past + new tokens, plus family extras.
        `positions` [S] (packed suffixes): each token's position in its own prompt, else common, common + 1, ..."""
        B, S = suffix_ids.shape
        out = {"attention_mask": torch.ones(B, common + S, dtype=torch.long, device=suffix_ids.device)}
        if positions is not None:
            out["position_ids"] = positions.to(suffix_ids.device).view(1, S).expand(B, S)
        for k in ("mm_token_type_ids", "token_type_ids"):
            if k in prepared:
                out[k] = prepared[k][:, common:].expand(B, -1)
        return out

    # -- helpers for subclasses --------------------------------------------------------------------------------
    def _image_positions(self, inputs, row: int) -> torch.Tensor:
        ids = inputs["input_ids"][row]
        pos = torch.nonzero(ids == self.image_token_id).flatten()
        if pos.numel() == 0:
            raise ValueError("no image tokens found in the prepared input: the chat template or processor dropped the "
                             "image (check that the processor is the model's own and the prompt has one image)")
        return pos


def _lossy_centre_crop(image_processor, square_input: bool):
    """Why this image processor's centre crop would cut part of the image off, or None when it cuts nothing.

    CLIP-style processors resize the shortest edge to `size` and then centre-crop `crop_size`: a non-square image
    (unless the adapter padded it to a square) or a crop smaller than the resize loses its borders, and the tokens
    would silently be assigned as if the whole image were seen."""
    if not getattr(image_processor, "do_center_crop", False):
        return None
    crop = getattr(image_processor, "crop_size", None) or {}
    size = getattr(image_processor, "size", None) or {}
    get = (lambda d, k: d.get(k) if isinstance(d, dict) else getattr(d, k, None))
    ch, cw = get(crop, "height"), get(crop, "width")
    edge = get(size, "shortest_edge")
    if edge is None:
        edge = min(v for v in (get(size, "height"), get(size, "width")) if v is not None) \
            if (get(size, "height") or get(size, "width")) else None
    if ch is None or cw is None or edge is None:
        return None
    if min(ch, cw) < edge:
        return f"it resizes the shortest edge to {edge} px and then centre-crops {cw}x{ch} px"
    if not square_input:
        return f"it resizes the shortest edge to {edge} px and centre-crops {cw}x{ch} px out of a non-square image"
    return None


def _refuse_lossy_crop(image_processor, square_input: bool):
    why = _lossy_centre_crop(image_processor, square_input)
    if why:
        raise ValueError(f"the image processor would cut off the image's borders ({why}), so panels near the edges "
                         "would lose their tokens while gazekit assigns tokens as if nothing were cropped: set "
                         "processor.image_processor.do_center_crop = False, or make crop_size equal to the resized "
                         "size (e.g. crop_size={'height': S, 'width': S} with size={'shortest_edge': S})")


def _is_organism_processor(processor) -> bool:
    try:
        from gazekit.organism.processor import ComicTileProcessor
    except ImportError:
        return False
    return isinstance(processor, ComicTileProcessor)


def _grid_centres(rows: int, cols: int, box) -> np.ndarray:
    """Row-major cell centres of a rows x cols grid laid over box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    ys = y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows
    xs = x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


@register
class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    region_note = ("LLaVA-1.5: the image is padded to a square (white) so the processor's centre crop loses nothing; "
                   "the vision tower's patch grid (24x24 at 336 px) gives one token per patch, row-major; a token "
                   "belongs to the region whose box contains its patch centre; padding tokens belong to none.")

    @classmethod
    def matches(cls, model, processor) -> bool:
        return super().matches(model, processor) and not _is_organism_processor(processor)

    def preprocess_image(self, image):
        # the padding below makes a square, so only a crop smaller than the resize can still lose pixels
        _refuse_lossy_crop(getattr(self.processor, "image_processor", None), square_input=True)
        W, H = image.size
        S = max(W, H)
        if W == H:
            return image, (0.0, 0.0)
        canvas = Image.new("RGB", (S, S), (255, 255, 255))
        dx, dy = (S - W) // 2, (S - H) // 2
        canvas.paste(image, (dx, dy))
        return canvas, (float(dx), float(dy))

    def image_cells(self, inputs, row, scene, fed_size, offset):
        pos = self._image_positions(inputs, row)
        n = pos.numel()
        g = int(math.isqrt(n))
        if g * g != n:
            if int(math.isqrt(n - 1)) ** 2 == n - 1:  # vision_feature_select_strategy="full" keeps the CLS token
                pos, g = pos[1:], int(math.isqrt(n - 1))
            else:
                raise ValueError(f"LLaVA adapter expects a square patch grid, got {n} image tokens")
        S = fed_size[0]
        centres = _grid_centres(g, g, (0, 0, S, S)) - np.array(offset)
        return ImageCells(pos, centres)


@register
class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    supports_packed_prompt = False  # M-RoPE positions of the image come from the model's own rope index
    region_note = ("Qwen2-VL family: one image, resized (aspect kept, no crop) to multiples of patch*merge; after "
                   "the spatial merge each image token covers a merge x merge block of patches, laid out row-major "
                   "over image_grid_thw; a token belongs to the region containing its block centre.")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        pos = self._image_positions(inputs, row)
        t, h, w = (int(v) for v in inputs["image_grid_thw"][row])
        m = int(getattr(self.processor.image_processor, "merge_size", 2))
        gh, gw = h // m, w // m
        if t * gh * gw != pos.numel():
            raise ValueError(f"{self.family}: {pos.numel()} image tokens but grid {t}x{gh}x{gw} after merge")
        W, H = scene.image.size
        return ImageCells(pos, _grid_centres(gh, gw, (0, 0, W, H)))

    def suffix_inputs(self, prepared, common, suffix_ids, positions=None):
        # M-RoPE: text after the image continues from the prefix's rope delta, on all position axes
        out = super().suffix_inputs(prepared, common, suffix_ids)
        out.pop("attention_mask")
        B, S = suffix_ids.shape
        delta = self.model.model.rope_deltas
        if positions is None:
            positions = torch.arange(common, common + S)
        pos = positions.to(suffix_ids.device).view(1, 1, -1)
        pos = pos + delta.to(suffix_ids.device).view(1, -1, 1)[:, :1]
        n_axes = 3
        out["position_ids"] = pos.expand(n_axes, B, S)
        return out


@register
class OrganismAdapter(Adapter):
    """The embedded comic organism: LLaVA-class, but its processor encodes each panel as its own tile."""

    family = "gazekit-organism"
    model_types = ("llava",)
    region_note = ("gazekit organism: each panel (a Strip's panel box; for other images one of six equal columns) is "
                   "its own tile for the vision tower; a region's tokens are the tokens of the tiles whose 2x2 patch "
                   "centres fall in its box.")

    @classmethod
    def matches(cls, model, processor) -> bool:
        return _is_organism_processor(processor)

    def tile_boxes(self, scene) -> list:
        from gazekit.regions import Strip

        if isinstance(scene, Strip):
            return list(scene.panel_boxes)
        W, H = scene.image.size
        n = self.processor.n_tiles
        return [(i * W / n, 0.0, (i + 1) * W / n, float(H)) for i in range(n)]

    def build_inputs(self, images, prompts, scenes):
        texts = [self.chat_text(p) for p in prompts]
        return self.processor(text=texts, images=images, tile_boxes=[self.tile_boxes(s) for s in scenes],
                              return_tensors="pt")

    def image_cells(self, inputs, row, scene, fed_size, offset):
        pos = self._image_positions(inputs, row)
        per = self.processor.tokens_per_tile
        g = int(math.isqrt(per))
        boxes = self.tile_boxes(scene)
        if pos.numel() != per * len(boxes):
            raise ValueError(f"organism: expected {per * len(boxes)} image tokens, found {pos.numel()}")
        centres = np.concatenate([_grid_centres(g, g, b) for b in boxes])
        return ImageCells(pos, centres)


def adapter_for(model, processor) -> Adapter:
    # more specific adapters (the organism) are checked first
    for cls in sorted(_REGISTRY, key=lambda c: c.family != "gazekit-organism"):
        if cls.matches(model, processor):
            return cls(model, processor)
    mt = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise UnsupportedModelError(
        f"gazekit has no adapter for model_type {mt!r}. Supported families: {', '.join(supported_families())}. "
        "To add one, subclass gazekit.models.adapters.Adapter (see docs/adding-a-family.md).")


def _load_optional_families():
    import importlib
    import pkgutil

    from gazekit.models import families

    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"gazekit.models.families.{info.name}")


_load_optional_families()
