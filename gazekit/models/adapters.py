"""Family adapters: everything gazekit knows about one VLM family lives in one small class.

An adapter answers four questions for its family:
  1. where the language model's attention modules are (one per layer, index = layer),
  2. how to turn (image, prompt) into model inputs (chat template with the generation prompt, processor quirks),
  3. which sequence positions are image tokens, and where each one sits in the *original* image (its cell centre
     in image pixels) — the generic code in `gazekit.models.vlm` then assigns tokens to regions by which region box
     contains the centre,
  4. how to pre-process an image so that no region is lost (e.g. LLaVA centre-crops: we pad to a square instead).

This module holds only the base class `Adapter`, the registry (`register`, `supported_families`), the lookup
(`adapter_class_for`) and small helpers for family modules. Each family is one module in `gazekit/models/families/`
(imported automatically at the bottom of this module) whose adapter class is decorated with `@register`; a package
that ships its own model registers its adapter the same way. See docs/adding-a-family.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from gazekit.models import _compat

_REGISTRY: list[type["Adapter"]] = []


def register(cls: type["Adapter"]) -> type["Adapter"]:
    """Class decorator: make `cls` one of the adapters `adapter_class_for` chooses from.

    Args:
        cls: an `Adapter` subclass with `family` and `model_types` set.

    Returns:
        `cls` itself (so it can be used as `@register`)."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register expects an Adapter subclass, got {cls!r}")
    if not cls.family or not cls.model_types:
        raise ValueError(f"{cls.__name__} must set `family` (its name) and `model_types` (the config.model_type "
                         "values it serves) before it is registered")
    _REGISTRY.append(cls)
    return cls


def supported_families() -> list[str]:
    """The names of all registered families, sorted (e.g. ['gemma3', 'idefics3', 'llava', ...])."""
    return sorted({c.family for c in _REGISTRY})


class UnsupportedModelError(ValueError):
    """No registered adapter serves this model; the message lists the supported families and how to add one."""


def adapter_class_for(config, processor=None) -> type["Adapter"]:
    """The adapter class for a model, chosen from its config (and its processor, where an adapter needs it).

    Among the registered adapters whose `matches(config, processor)` is true, the one with the highest `priority`
    wins; of equal priorities the one registered last (so an adapter you register for a built-in model type
    replaces the built-in). Both load paths call this: `gazekit.load(path)` before it downloads any weights (to
    refuse an unsupported model at once, and to know which modules stay in full precision in 4-bit), and
    `gazekit.load(model, processor)`.

    Args:
        config: the model's `PretrainedConfig` (`model.config`, or `AutoConfig.from_pretrained(path)`).
        processor: the model's processor, or None when it is not built yet (adapters that match on the processor
            then do not match).

    Returns:
        the adapter class; instantiate it as `cls(model, processor)`.

    Raises:
        UnsupportedModelError: no registered adapter matches; the message lists the supported families and names
            the fix (an `Adapter` subclass in `gazekit/models/families/`, see docs/adding-a-family.md)."""
    candidates = [c for c in _REGISTRY if c.matches(config, processor)]
    if not candidates:
        model_type = getattr(config, "model_type", None) or type(config).__name__
        raise UnsupportedModelError(
            f"gazekit has no adapter for model_type {model_type!r}. Supported families: "
            f"{', '.join(supported_families())}. To add one, subclass gazekit.models.adapters.Adapter in a module of "
            "gazekit/models/families/ and decorate it with @register (see docs/adding-a-family.md).")
    # max() keeps the first of equal keys: walking the registry backwards makes that the one registered last
    return max(reversed(candidates), key=lambda c: c.priority)


@dataclass
class ImageCells:
    """Image-token positions of one input row and each token's cell centre (x, y) in original image pixels.

    Centres outside the image (e.g. tokens over padding) belong to no region.

    Args:
        positions: LongTensor [N], the image tokens' sequence positions.
        centres: float array [N, 2], each token's cell centre (x, y) in original image pixels."""

    positions: torch.Tensor  # LongTensor [N]
    centres: np.ndarray  # float [N, 2]


def _chat_messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


class Adapter:
    """Base class of family adapters. Subclasses set `family`, `model_types` (and `full_precision_modules`,
    `region_note`) and override what differs; see docs/adding-a-family.md.

    Args:
        model: the Hugging Face model.
        processor: its processor (tokenizer + image processor)."""

    #: the family's name, as `VLM.family` and `supported_families()` show it
    family: ClassVar[str] = ""
    #: the `config.model_type` values this adapter serves
    model_types: ClassVar[tuple[str, ...]] = ()
    #: when several adapters match one model, the highest priority wins: an adapter for a narrower case (one
    #: processor class of a model type another adapter serves) sets a higher priority than the general one
    priority: ClassVar[int] = 0
    #: module names (as `model.named_modules()` gives them; a name covers its submodules) that a 4-bit load keeps
    #: in full precision: the vision tower, the projector into the text model and the output head. The default
    #: lists the names transformers 5 uses across families; a family lists exactly its own.
    full_precision_modules: ClassVar[tuple[str, ...]] = tuple(
        p + n for n in ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector")
        for p in ("", "model.")) + ("lm_head",)
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
    def matches(cls, config, processor=None) -> bool:
        """Whether this adapter serves a model (by default: its `config.model_type` is one of `model_types`).

        Args:
            config: the model's config.
            processor: the model's processor, or None when not known yet (at `gazekit.load(path)`'s first check).
        """
        return getattr(config, "model_type", None) in cls.model_types

    @classmethod
    def check_processor(cls, processor) -> None:
        """Refuse a processor that cannot prepare images (e.g. a bare tokenizer, which would pass the lookup and
        fail much later, at the first image, with a misleading message about boxes).

        Args:
            processor: the processor given to `gazekit.load`.

        Raises:
            ValueError: the processor has no image processor; the message names the fix."""
        if not hasattr(processor, "image_processor"):
            raise ValueError(f"gazekit.load(model, processor) got a {type(processor).__name__}, which has no "
                             "image processor: pass the model's processor, e.g. AutoProcessor.from_pretrained(<model "
                             "id>), not its tokenizer")

    # -- model structure ---------------------------------------------------------------------------------------
    @property
    def text_config(self):
        """The text model's config (`config.get_text_config()`)."""
        return self.model.config.get_text_config()

    def language_model(self):
        """The text decoder (the module whose `.layers` are the decoder layers), wherever this transformers
        version puts it."""
        found = _compat.language_model(self.model)
        if found is None:
            raise UnsupportedModelError(f"cannot find the language model inside {type(self.model).__name__}: "
                                        "override Adapter.language_model() for this family")
        return found

    def attention_modules(self) -> list[torch.nn.Module]:
        """One self-attention module per text layer, index = layer."""
        return [layer.self_attn for layer in self.language_model().layers]

    @property
    def n_layers(self) -> int:
        """Number of text layers."""
        return len(self.attention_modules())

    @property
    def n_heads(self) -> int:
        """Query heads per text layer."""
        return int(self.text_config.num_attention_heads)

    @property
    def image_token_id(self) -> int:
        """The id of the image placeholder token (from the config, else from the processor's `image_token`)."""
        found = _compat.image_token_id(self.model.config)
        if found is not None:
            return found
        tok = getattr(self.processor, "tokenizer", self.processor)
        return int(tok.convert_tokens_to_ids(self.processor.image_token))

    # -- inputs ------------------------------------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> tuple[Image.Image, tuple[float, float]]:
        """Image handed to the processor, and the offset (dx, dy) of the original inside it. Refuses a processor
        whose centre crop would cut the image (a family that pads to a square overrides this).

        Args:
            image: the original image (a Strip's or Scene's)."""
        W, H = image.size
        refuse_lossy_crop(getattr(self.processor, "image_processor", None), square_input=(W == H))
        return image, (0.0, 0.0)

    def chat_text(self, prompt: str) -> str:
        """The chat-templated text of one user turn (one image, then `prompt`), with the generation prompt.

        Args:
            prompt: the question or instruction."""
        return self.processor.apply_chat_template(_chat_messages(prompt), add_generation_prompt=True, tokenize=False)

    def build_inputs(self, images: list[Image.Image], prompts: list[str], scenes) -> dict:
        """The processor's inputs for one (image, prompt) pair per row.

        Args:
            images: the preprocessed images (`preprocess_image`'s), one per row.
            prompts: one prompt per row.
            scenes: the Strips/Scenes the images came from, one per row (for families that tile by region)."""
        texts = [self.chat_text(p) for p in prompts]
        # several prompts: one list of images per prompt (Gemma 3's and SmolVLM's processors refuse a flat list,
        # the others accept both)
        fed = images if len(images) == 1 else [[im] for im in images]
        return self.processor(text=texts, images=fed, return_tensors="pt", padding=True)

    def image_cells(self, inputs, row: int, scene, fed_size: tuple[int, int], offset) -> ImageCells:
        """Every image-token position of one row and its cell centre in original image pixels (must override).

        Args:
            inputs: the processor's output (`build_inputs`).
            row: the batch row.
            scene: that row's Strip/Scene.
            fed_size: (width, height) of the image handed to the processor.
            offset: (dx, dy) of the original image inside the fed one (`preprocess_image`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement image_cells (see docs/adding-a-family.md)")

    def question_inputs(self, prepared, prompts) -> list:
        """For each of `prompts`, the token-aligned inputs (input_ids, attention_mask, token types) of that prompt
        asked about the images `prepared` holds (one prompt for all its rows) — without running the image
        processor again (None for a prompt where that cannot be done safely: prepare it normally). Discovery asks
        six questions of each strip; on a small model preparing the image six times costs more than the model.

        How: tokenize the chat texts with the image placeholder unexpanded; the old and a new text agree up to some
        token c after the image; `prepared`'s expanded ids end with the old text's tokens from c on (checked), and
        these are replaced by the new text's.

        Args:
            prepared: a `Prepared` of one prompt (all rows).
            prompts: the other prompts to ask about the same images."""
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
        `positions` [S] (packed suffixes): each token's position in its own prompt, else common, common + 1, ...

        Args:
            prepared: the `Prepared` whose first `common` tokens are cached.
            common: the cached prefix length.
            suffix_ids: LongTensor [B, S] of the tokens to run.
            positions: optional LongTensor [S] of the suffix tokens' own positions (packed suffixes)."""
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


def refuse_lossy_crop(image_processor, square_input: bool) -> None:
    """Refuse an image processor whose centre crop would cut off part of the image (for `preprocess_image`).

    Args:
        image_processor: the processor's image processor (or None: nothing to check).
        square_input: whether the image handed to it is square (a family that pads to a square passes True).

    Raises:
        ValueError: the crop would lose pixels; the message names the processor settings that fix it."""
    why = _lossy_centre_crop(image_processor, square_input)
    if why:
        raise ValueError(f"the image processor would cut off the image's borders ({why}), so panels near the edges "
                         "would lose their tokens while gazekit assigns tokens as if nothing were cropped: set "
                         "processor.image_processor.do_center_crop = False, or make crop_size equal to the resized "
                         "size (e.g. crop_size={'height': S, 'width': S} with size={'shortest_edge': S})")


def grid_centres(rows: int, cols: int, box) -> np.ndarray:
    """Row-major cell centres of a rows x cols grid laid over a box (for `image_cells`).

    Args:
        rows: grid rows.
        cols: grid columns.
        box: (x0, y0, x1, y1) in image pixels.

    Returns:
        float array [rows * cols, 2] of (x, y) centres, row by row."""
    x0, y0, x1, y1 = box
    ys = y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows
    xs = x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _load_families():
    """Import every module of gazekit/models/families/: each registers its adapter."""
    import importlib
    import pkgutil

    from gazekit.models import families

    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"gazekit.models.families.{info.name}")


_load_families()
