"""The Qwen-class organism: a real `Qwen2VLForConditionalGeneration` that sees the whole strip as ONE image.

Unlike the LLaVA-class organism (`gazekit.organism`, one tile per panel), this model reads a strip the way Qwen-VL
models do: one image, resized (aspect kept, no crop) to multiples of patch x merge = 28 px, cut into 14 px patches
that one vision tower attends over jointly, each 2 x 2 block of patches merged into one language-model token.
`gazekit.load("organism-qwen")` returns it; its family is gazekit's ordinary `qwen2_vl` adapter (nothing
organism-specific happens after the processor).

Processor (`QwenComicProcessor`, a `Qwen2VLProcessor` without its video processor): the token budget is Qwen's own
`smart_resize` rule with `max_pixels` chosen so that a 1566 x 256 strip becomes 336 x 56 px = 2 x 12 merged tokens
(24 image tokens, two columns per panel, every panel's tokens inside its box). The downsizing is an area average
done in two exact steps -- `Image.reduce(f)` by the largest power of two that divides the image and keeps it at least
twice the target, then a PIL BOX resize to the target -- so that training can compose strips from cached half-size
panels and get the very pixels the processor gives at evaluation (tested). The Qwen image processor then only
rescales, normalises and patchifies (`do_resize=False`).

Model: tiny Qwen2-VL (vision tower: 14 px patches, 2 x 2 merge; language model: 3 layers x 16 heads, head dim 8).
M-RoPE: Qwen2-VL's text rotary splits each head's frequencies into (temporal, height, width) sections in that order,
so the width axis -- the only thing that tells the panels apart by position -- gets the LOWEST frequencies. With
head dim 8 and Qwen's theta (1e6) the twelve image columns would differ by less than 0.01 rad: the language model
could not tell panel 2 from panel 5 by position at all. The organism uses `rope_theta` 10 (width frequencies 0.32
and 0.18 rad per column), keeping Qwen2-VL's section order.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from gazekit.models.offline import without_video_processor

QWEN_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights_qwen")
PROCESSOR_CONFIG = "gazekit_qwen_processor.json"
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PATCH, MERGE, TEMPORAL = 14, 2, 2
UNIT = PATCH * MERGE
# a 1566 x 256 strip -> smart_resize -> 336 x 56 px: 2 x 12 merged tokens (see the module docstring)
MAX_PIXELS = 20000
MIN_PIXELS = UNIT * UNIT
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# v_depth 0: no transformer blocks in the vision tower, only Qwen2-VL's patch embedding and 2 x 2 patch merger, so
# each image token sees its own 28 x 28 px block and nothing else. Measured at 2,000 steps (eval/results/): with a
# 2-block full-attention tower over the whole strip the organism answered 17.7% of per-panel questions and had no head
# scoring >= 0.5 (qwen-q1-theta10); with depth 0, 73.0%, 12 heads >= 0.5 and top-7 steering 50.2% vs 0.4% for random
# heads (qwen-q2-depth0). Panels that mix in the encoder are what a tiny single-image model cannot pull apart again.
DEFAULT_QWEN_ARCH = {
    "v_dim": 64, "v_depth": 0, "v_heads": 4, "v_mlp_ratio": 2,              # vision tower (whole strip)
    "hidden": 128, "inter": 256, "layers": 3, "heads": 16,                   # language model
    "rope_theta": 10.0, "mrope_section": [1, 1, 2],                          # (t, h, w); sums to head_dim / 2
}


# ------------------------------------------------------------------------------------------------ tokenizer
def build_qwen_tokenizer():
    """The organism's word-level tokenizer (as `gazekit.organism.processor.build_tokenizer`) with Qwen's special
    tokens: lower-cased words, punctuation split off, unknown words -> <unk>; eos <|im_end|>, pad <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gazekit.organism.processor import SPECIAL_TOKENS, build_vocab
    vocab = {}
    for w in QWEN_SPECIALS + [w for w in build_vocab() if w not in SPECIAL_TOKENS]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation(behavior="isolated")])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>",
                                  extra_special_tokens=[t for t in QWEN_SPECIALS
                                                        if t not in ("<|im_end|>", "<|endoftext|>", "<unk>")])
    tok.padding_side = "left"  # batched generation appends on the right
    tok.chat_template = CHAT_TEMPLATE
    return tok


# ------------------------------------------------------------------------------------------------ processor
def _reduce_factor(W: int, H: int, w: int, h: int) -> int:
    """The exact pre-reduction: the largest power of two dividing W and H that keeps the image >= 2x the target."""
    f = 1
    while W % (2 * f) == 0 and H % (2 * f) == 0 and W // (2 * f) >= 2 * w and H // (2 * f) >= 2 * h:
        f *= 2
    return f


class QwenComicProcessor(without_video_processor(__import__("transformers").Qwen2VLProcessor)):
    """`Qwen2VLProcessor` (without its video processor) that first downsizes every image to a token budget.

    Args:
        image_processor: a `Qwen2VLImageProcessorPil` with `do_resize=False` (default: built here).
        tokenizer: the word-level tokenizer (default: `build_qwen_tokenizer()`).
        chat_template: default `CHAT_TEMPLATE`.
        max_pixels, min_pixels: the budget of Qwen's `smart_resize` (default: a strip -> 336 x 56 px)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, *, max_pixels: int = MAX_PIXELS,
                 min_pixels: int = MIN_PIXELS, **kwargs):
        from transformers import Qwen2VLImageProcessorPil
        tokenizer = build_qwen_tokenizer() if tokenizer is None else tokenizer
        if image_processor is None:
            image_processor = Qwen2VLImageProcessorPil(
                patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL, do_resize=False,
                size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                         chat_template=chat_template or CHAT_TEMPLATE)
        self.max_pixels, self.min_pixels = int(max_pixels), int(min_pixels)

    def target_size(self, W: int, H: int) -> tuple[int, int]:
        """(width, height) an image of W x H px is downsized to (Qwen's `smart_resize` with this budget)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        h, w = smart_resize(H, W, factor=UNIT, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def downsize(self, image: Image.Image) -> Image.Image:
        """The image the vision tower sees: area-averaged to `target_size` (exact 2^k reduction, then BOX).

        Args:
            image: a PIL image (a strip, a panel, any picture)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        W, H = image.size
        w, h = self.target_size(W, H)
        f = _reduce_factor(W, H, w, h)
        if f > 1:
            image = image.reduce(f)
        return image if image.size == (w, h) else image.resize((w, h), Image.BOX)

    def __call__(self, images=None, text=None, **kwargs):
        """As `Qwen2VLProcessor.__call__`, every image first downsized (`downsize`); one image per prompt.

        Args:
            images: PIL images, one per prompt (or one list of one image per prompt).
            text: the chat texts (`apply_chat_template`), one per image."""
        if images is not None:
            flat = [im for x in (images if isinstance(images, (list, tuple)) else [images])
                    for im in (x if isinstance(x, (list, tuple)) else [x])]
            done: dict = {}  # one strip asked several times in a batch (e.g. once per target): downsize it once
            for im in flat:
                if id(im) not in done:
                    done[id(im)] = self.downsize(im)
            images = [done[id(im)] for im in flat]
        return super().__call__(images=images, text=text, **kwargs)

    # -------------------------------------------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str, **kwargs):
        """Tokenizer files + `gazekit_qwen_processor.json` (budget, patching, normalisation); no pickle.

        Args:
            save_directory: the folder (created)."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        ip = self.image_processor
        cfg = {"processor_class": type(self).__name__, "max_pixels": self.max_pixels, "min_pixels": self.min_pixels,
               "patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": TEMPORAL,
               "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
               "downsize": "Image.reduce(2^k) then Image.resize(BOX) to smart_resize(max_pixels)",
               "chat_template": self.chat_template}
        with open(os.path.join(save_directory, PROCESSOR_CONFIG), "w") as f:
            json.dump(cfg, f, indent=1)
        return save_directory

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs) -> "QwenComicProcessor":
        """The processor saved by `save_pretrained` in `directory` (local files only).

        Args:
            directory: the folder."""
        from gazekit.organism.processor import read_saved_processor
        cfg, tok = read_saved_processor(directory, PROCESSOR_CONFIG, cls.__name__)
        return cls(tokenizer=tok, chat_template=cfg["chat_template"], max_pixels=cfg["max_pixels"],
                   min_pixels=cfg["min_pixels"])


def patchify(image: np.ndarray) -> tuple[torch.Tensor, list[int]]:
    """uint8 [H, W, 3] (already downsized) -> (patches [N, 3*2*14*14], grid [1, H/14, W/14]) exactly as the Qwen
    image processor lays them out (rescale, CLIP normalisation, merge-block order, temporal copy); the training
    recipe uses it instead of the processor (tested equal)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).mul_(1 / 255.0)  # a copy: cached arrays are read-only
    x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    x = x.permute(2, 0, 1)  # C, H, W
    C, H, W = x.shape
    gh, gw = H // PATCH, W // PATCH
    p = x.reshape(C, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH).permute(1, 4, 2, 5, 0, 3, 6)
    p = p.unsqueeze(5).expand(*p.shape[:5], TEMPORAL, *p.shape[5:])
    return p.reshape(gh * gw, C * TEMPORAL * PATCH * PATCH), [1, gh, gw]


# ------------------------------------------------------------------------------------------------ model
def build_qwen_model(processor, arch: dict | None = None, seed: int = 0):
    """A freshly initialised Qwen-class organism (weights drawn under `torch.manual_seed(seed)`).

    Args:
        processor: its `QwenComicProcessor` (token ids come from its tokenizer).
        arch: overrides of `DEFAULT_QWEN_ARCH`.
        seed: the weights' seed."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    a = dict(DEFAULT_QWEN_ARCH, **(arch or {}))
    head_dim = a["hidden"] // a["heads"]
    if sum(a["mrope_section"]) != head_dim // 2:
        raise ValueError(f"mrope_section {a['mrope_section']} must sum to head_dim / 2 = {head_dim // 2}")
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=a["hidden"], intermediate_size=a["inter"],
                num_hidden_layers=a["layers"], num_attention_heads=a["heads"], num_key_value_heads=a["heads"],
                max_position_embeddings=512, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": float(a["rope_theta"]),
                                 "mrope_section": list(a["mrope_section"])})
    vision = dict(depth=a["v_depth"], embed_dim=a["v_dim"], hidden_size=a["hidden"], num_heads=a["v_heads"],
                  mlp_ratio=a["v_mlp_ratio"], patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    model.set_attn_implementation("sdpa")
    g = model.generation_config
    g.eos_token_id, g.pad_token_id, g.bos_token_id, g.do_sample = ids["<|im_end|>"], ids["<|endoftext|>"], None, False
    return model


# ------------------------------------------------------------------------------------------------ training data
@lru_cache(maxsize=None)
def half_panel(colour: str, obj: str, action: str, cue: bool, dx: int, dy: int) -> np.ndarray:
    """`draw_panel(...)` reduced 2x (exact 2 x 2 area average), uint8 [128, 128, 3], memoised (7,056 panels)."""
    from gazekit.comics.synthetic import draw_panel
    a = np.asarray(draw_panel(colour, obj, action, cue, dx, dy).reduce(2))
    a.setflags(write=False)
    return a


def strip_size() -> tuple[int, int]:
    """(width, height) in px of a `gazekit.comics.synthetic` strip: six 256 px panels, 6 px gaps."""
    from gazekit.regions import N_PANELS, STRIP_GAP, STRIP_HEIGHT
    return N_PANELS * STRIP_HEIGHT + (N_PANELS - 1) * STRIP_GAP, STRIP_HEIGHT


def training_strip(processor, attrs, cue, offsets) -> np.ndarray:
    """The downsized strip (uint8 [h, w, 3]) `processor.downsize(synthetic strip)` gives, composed from cached
    half-size panels: the strip's 2x reduction equals its panels' (panels at even x, 6 px white gaps)."""
    from gazekit.regions import N_PANELS, STRIP_GAP, STRIP_HEIGHT
    P, g = STRIP_HEIGHT // 2, STRIP_GAP // 2
    W, H = strip_size()
    w, h = processor.target_size(W, H)
    if _reduce_factor(W, H, w, h) != 2:
        raise ValueError("training_strip composes at half size: this budget needs another pre-reduction")
    half = np.full((P, N_PANELS * P + (N_PANELS - 1) * g, 3), 255, dtype=np.uint8)
    for i, (a, o) in enumerate(zip(attrs, offsets)):
        half[:, i * (P + g):i * (P + g) + P] = half_panel(*a, i == cue, *o)
    return np.asarray(Image.fromarray(half).resize((w, h), Image.BOX))


class QwenExampleMaker:
    """Random training examples for the Qwen organism: (prompt ids, answer ids, downsized image uint8 [h, w, 3]),
    the same tasks and filler words as `gazekit.organism.tasks.ExampleMaker`. The single-panel task shows one panel
    alone, at the scale it has inside a strip (56 x 56 px: 2 x 2 merged tokens)."""

    def __init__(self, processor, filler_max: int = 8):
        self.proc = processor
        self.tok = processor.tokenizer
        self.filler_max = filler_max
        self.eos = self.tok.eos_token_id
        self.image_pad = self.tok.convert_tokens_to_ids("<|image_pad|>")
        self._cache: dict = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def prompt_ids(self, question: str, n_image_tokens: int, filler=()) -> list[int]:
        """Chat-templated prompt ids with the image placeholder expanded to `n_image_tokens`."""
        q = " ".join(list(filler) + [question])
        text = self.proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                           {"type": "text", "text": q}]}],
                                             add_generation_prompt=True, tokenize=False)
        out = []
        for i in self._ids(text):
            out.extend([i] * n_image_tokens if i == self.image_pad else [i])
        return out

    def __call__(self, rng: np.random.Generator, task: str):
        from gazekit.comics.synthetic import caption_of, sample_strip_attrs
        from gazekit.organism.processor import FILLER_WORDS, SINGLE_PANEL_PROMPT
        from gazekit.organism.tasks import default_answer, question
        attrs, cue, offsets = sample_strip_attrs(rng)
        caps = [caption_of(a) for a in attrs]
        if task == "single":
            k = int(rng.integers(6))
            side = self.proc.target_size(*strip_size())[1]  # a panel is as high as the strip
            panel = Image.fromarray(np.asarray(half_panel(*attrs[k], k == cue, *offsets[k])))
            img = np.asarray(panel.resize((side, side), Image.BOX))
            n = (side // UNIT) ** 2
            return self.prompt_ids(SINGLE_PANEL_PROMPT, n), self._ids(caps[k]) + [self.eos], img
        k = int(rng.integers(1, 7)) if task == "panel" else None
        n_fill = int(rng.integers(self.filler_max + 1)) if self.filler_max > 0 else 0
        filler = [FILLER_WORDS[i] for i in rng.integers(len(FILLER_WORDS), size=n_fill)]
        img = training_strip(self.proc, attrs, cue, offsets)
        n = (img.shape[0] // UNIT) * (img.shape[1] // UNIT)
        ans = default_answer(task, caps, cue + 1, k)
        return self.prompt_ids(question(task, k), n, filler), self._ids(ans) + [self.eos], img


def qwen_collate(examples, processor) -> dict:
    """Right-padded batch (loss on the answer only) with patchified images, grids and mm_token_type_ids."""
    pad = processor.tokenizer.pad_token_id
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    L = max(len(p) + len(a) for p, a, _ in examples)
    ids = torch.full((len(examples), L), pad, dtype=torch.long)
    lab = torch.full((len(examples), L), -100, dtype=torch.long)
    att = torch.zeros((len(examples), L), dtype=torch.long)
    pix, grids = [], []
    for r, (p, a, img) in enumerate(examples):
        s = p + a
        ids[r, :len(s)] = torch.tensor(s)
        att[r, :len(s)] = 1
        lab[r, len(p):len(s)] = torch.tensor(a)
        pv, g = patchify(img)
        pix.append(pv)
        grids.append(g)
    return {"input_ids": ids, "attention_mask": att, "labels": lab, "pixel_values": torch.cat(pix),
            "image_grid_thw": torch.tensor(grids), "mm_token_type_ids": (ids == image_pad).long()}


# ------------------------------------------------------------------------------------------------ loading
def load_qwen_organism(path: str | None = None, quantize: str | None = None):
    """(model, processor) of the Qwen-class organism in `path` (default: the shipped weights), eval mode, "sdpa".

    Args:
        path: a folder written by `python -m gazekit.organism.train --family qwen2_vl --out DIR`.
        quantize: None, or "4bit": NF4 text model on the CPU, the qwen2_vl adapter's `full_precision_modules`
            (vision tower with its merger, lm_head) kept.

    Raises:
        FileNotFoundError: no weights in `path`; the message says how to train them."""
    from transformers import Qwen2VLForConditionalGeneration

    from gazekit.organism import load_weights
    return load_weights(path or QWEN_WEIGHTS_DIR, quantize, Qwen2VLForConditionalGeneration, QwenComicProcessor,
                        "sdpa", "python -m gazekit.organism.train --family qwen2_vl --out DIR")


def load_qwen_vlm(quantize: str | None = None, dtype=None, path: str | None = None):
    """The shipped Qwen-class organism as a gazekit `VLM` (`gazekit.load("organism-qwen")`), with its metadata;
    its adapter is gazekit's ordinary qwen2_vl one.

    Args:
        quantize: None, or "4bit" (NF4 text model on the CPU).
        dtype: None (float32), a torch dtype or its name.
        path: a folder of Qwen organism weights (default: the shipped ones)."""
    from gazekit.models.adapters import adapter_class_for
    from gazekit.organism import as_vlm

    def qwen2_vl_adapter(model, processor):
        return adapter_class_for(model.config, processor)(model, processor)

    return as_vlm(load_qwen_organism, path or QWEN_WEIGHTS_DIR, quantize, dtype, qwen2_vl_adapter,
                  "gazekit/comic-organism-qwen")
