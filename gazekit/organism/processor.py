"""The organism's processor: a word-level tokenizer plus an image processor that cuts an image into tiles.

Contract (gazekit's organism adapter relies on it):

- ``.tokenizer`` — a `PreTrainedTokenizerFast`: word level, lowercase normaliser, punctuation split off, so the
  paper's prompts as written ("Look carefully at this six-panel comic strip. ...") tokenize; unknown words -> <unk>.
- ``.image_token`` ("<image>"), ``.image_token_id``, ``.tokens_per_tile`` (4), ``.n_tiles`` (6), ``.tile_size`` (32).
- ``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` -> "<bos> <image> user : {q} assistant :"
  with ONE image placeholder.
- ``__call__(text=[...], images=[...], tile_boxes=[[box]*6, ...] | None, return_tensors="pt")`` -> BatchFeature
  (input_ids, attention_mask, pixel_values [B*n_tiles, 3, 32, 32]). Each image is cut into `n_tiles` tiles by its
  pixel boxes (default: equal-width columns), each tile area-averaged to 32 x 32; the placeholder expands to
  n_tiles * tokens_per_tile image tokens, tile i's tokens being the i-th block of 4 (its 2 x 2 patches, row-major).
- ``batch_decode`` / ``decode`` -> "red ball flies" text.
- ``save_pretrained(dir)`` / ``ComicTileProcessor.from_pretrained(dir)``: JSON + tokenizer files, no pickle.

For a `Strip`, pass ``tile_boxes=[strip.panel_boxes]`` so each panel is exactly one tile (equal-width columns cut
across the 6 px gaps and are off by a few pixels).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from gazekit.regions import ORDINALS, NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT, VQA_QUESTION, panel_question

PROCESSOR_CONFIG = "gazekit_processor.json"
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<image>", "<unk>"]
# words the organism never needs to answer with but that appear in its prompts
SINGLE_PANEL_PROMPT = "What is happening in this picture?"
FILLER_WORDS = ["please", "now", "okay", "hello", "so", "well", "then", "hey"]


def _words(text: str) -> list[str]:
    """Lowercase + split off punctuation: the same normalisation as the tokenizer (used to build its vocabulary)."""
    out, cur = [], ""
    for ch in text.lower():
        if ch.isspace():
            if cur:
                out.append(cur)
            cur = ""
        elif not ch.isalnum():
            if cur:
                out.append(cur)
            out.append(ch)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def build_vocab() -> dict[str, int]:
    """Deterministic word -> id map: special tokens, chat words, every prompt word, then the caption vocabulary."""
    from gazekit.comics.synthetic import ACTIONS, COLOURS, OBJECTS
    words = list(SPECIAL_TOKENS) + ["user", "assistant", ":", "."]
    prompts = [panel_question(k) for k in range(1, 7)] + [VQA_QUESTION, NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT,
                                                          SINGLE_PANEL_PROMPT]
    for p in prompts:
        words += _words(p)
    words += list(ORDINALS) + list(COLOURS) + list(OBJECTS) + list(ACTIONS) + FILLER_WORDS
    vocab: dict[str, int] = {}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    return vocab


def build_tokenizer(vocab: dict[str, int] | None = None):
    """The organism's word-level tokenizer: lower-cased words, punctuation split off, unknown words -> <unk>.

    Args:
        vocab: word -> id (None: `build_vocab()`, the organism's 66-word vocabulary plus special tokens).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = build_vocab() if vocab is None else vocab
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation(behavior="isolated")])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=["<image>"])
    tok.padding_side = "left"  # batched generation appends on the right
    return tok


def read_saved_processor(directory: str, config_name: str, class_name: str):
    """(config dict, tokenizer) of an organism processor saved in `directory` (local files only), the tokenizer
    padding on the left as batched generation needs.

    Args:
        directory: the folder.
        config_name: the processor's JSON file in it.
        class_name: the processor class (named in the error when the JSON file is missing)."""
    from transformers import PreTrainedTokenizerFast
    path = os.path.join(directory, config_name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: this folder was not saved by {class_name}.save_pretrained")
    with open(path) as f:
        cfg = json.load(f)
    tok = PreTrainedTokenizerFast.from_pretrained(directory)
    tok.padding_side = "left"
    return cfg, tok


class ComicTileProcessor:
    """Tokenizer + tiling image processor of the gazekit organism (see the module docstring for the contract)."""

    image_token = "<image>"

    def __init__(self, tokenizer=None, *, n_tiles: int = 6, tile_size: int = 32, patch_size: int = 16,
                 image_mean: float = 0.5, image_std: float = 0.5):
        self.tokenizer = build_tokenizer() if tokenizer is None else tokenizer
        self.n_tiles, self.tile_size, self.patch_size = int(n_tiles), int(tile_size), int(patch_size)
        if self.tile_size % self.patch_size:
            raise ValueError(f"tile_size {tile_size} must be a multiple of patch_size {patch_size}")
        self.image_mean, self.image_std = float(image_mean), float(image_std)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError("the tokenizer has no <image> token; build it with gazekit.organism.processor.build_tokenizer")

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per panel tile: (tile_size / patch_size) squared."""
        return (self.tile_size // self.patch_size) ** 2

    @property
    def image_seq_length(self) -> int:
        """Image tokens per strip: tiles x tokens per tile."""
        return self.n_tiles * self.tokens_per_tile

    # ------------------------------------------------------------------ text
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False, **kwargs):
        """HF-style messages -> "<bos> <image> user : {text} assistant :" (one user turn, at most one image)."""
        parts = ["<bos>"]
        for m in messages:
            role = m.get("role", "user")
            content = m.get("content", "")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            imgs = [c for c in content if c.get("type") == "image"]
            if len(imgs) > 1:
                raise ValueError("the organism reads one image per prompt; put the whole strip in one image")
            text = " ".join(c.get("text", "") for c in content if c.get("type") == "text").strip()
            if imgs:
                parts.append(self.image_token)
            parts.append(f"{role} : {text}".strip())
        if add_generation_prompt:
            parts.append("assistant :")
        out = " ".join(parts)
        if tokenize:
            return self.tokenizer(out, add_special_tokens=False)["input_ids"]
        return out

    def prompt(self, question: str, filler: Sequence[str] = ()) -> str:
        """The chat string for one question (filler words go between the image and the question: training only)."""
        q = " ".join(list(filler) + [question])
        return self.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}])

    def encode_prompt(self, text: str, n_images: int | None = None) -> list[int]:
        """Token ids of one prompt with each <image> placeholder expanded to n_tiles * tokens_per_tile ids."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_img = sum(1 for i in ids if i == self.image_token_id)
        if n_images is not None and n_img != n_images:
            raise ValueError(f"prompt has {n_img} <image> placeholders but {n_images} image(s) were given; "
                             "build the prompt with processor.apply_chat_template([{'role': 'user', 'content': "
                             "[{'type': 'image'}, {'type': 'text', 'text': question}]}])")
        out = []
        for i in ids:
            out.extend([i] * self.image_seq_length if i == self.image_token_id else [i])
        return out

    def decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """Token ids -> text, words joined by single spaces (special tokens dropped unless skip_special_tokens=False)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if skip_special_tokens and self.tokenizer.eos_token_id in ids:  # text after <eos> is not an answer
            ids = ids[:ids.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()

    def batch_decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """`decode` for each row of a batch of token ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.decode(x, skip_special_tokens=skip_special_tokens) for x in ids]

    # ------------------------------------------------------------------ images
    def default_tile_boxes(self, image: Image.Image):
        """The six equal-width panel boxes (x0, y0, x1, y1) of a strip image, in pixels, left to right."""
        W, H = image.size
        return [(W * i / self.n_tiles, 0.0, W * (i + 1) / self.n_tiles, float(H)) for i in range(self.n_tiles)]

    def tiles(self, image: Image.Image, tile_boxes=None) -> np.ndarray:
        """uint8 [n_tiles, tile, tile, 3]: each box cropped and area-averaged (PIL BOX) to tile x tile."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        if image.mode != "RGB":  # convert() always copies: a 1566 x 256 strip is 1.2 MB, more than a forward needs
            image = image.convert("RGB")
        boxes = self.default_tile_boxes(image) if tile_boxes is None else list(tile_boxes)
        if len(boxes) != self.n_tiles:
            raise ValueError(f"the organism reads exactly {self.n_tiles} tiles per image, got {len(boxes)} boxes")
        out = []
        for b in boxes:
            x0, y0, x1, y1 = (float(v) for v in b)
            # BOX resampling of a sub-rectangle (box=) area-averages exactly the box, fractional edges included
            out.append(np.asarray(image.resize((self.tile_size, self.tile_size), Image.BOX, box=(x0, y0, x1, y1))))
        return np.stack(out)

    def normalize(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 [..., H, W, 3] -> float [..., 3, H, W], (x/255 - mean) / std."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).float().div_(255.0).movedim(-1, -3)
        return x.sub_(self.image_mean).div_(self.image_std)  # in place: the same floats, one copy instead of three

    # ------------------------------------------------------------------ both
    def __call__(self, text=None, images=None, tile_boxes=None, return_tensors="pt", padding=True, **kwargs):
        from transformers import BatchFeature
        if text is None:
            raise ValueError("give text=[prompt, ...] (build prompts with apply_chat_template)")
        if isinstance(text, str):
            text = [text]
        if images is not None and isinstance(images, Image.Image):
            images = [images]
        if images is not None and len(images) != len(text):
            raise ValueError(f"give one image per prompt: {len(text)} prompts, {len(images)} images")
        if tile_boxes is not None and images is not None and len(tile_boxes) != len(images):
            raise ValueError(f"give one list of tile boxes per image: {len(images)} images, {len(tile_boxes)} lists")
        seqs = [self.encode_prompt(t, None if images is None else 1) for t in text]
        L = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        att = torch.zeros((len(seqs), L), dtype=torch.long)
        for r, s in enumerate(seqs):  # left padding: generation continues on the right
            ids[r, L - len(s):] = torch.tensor(s)
            att[r, L - len(s):] = 1
        data = {"input_ids": ids, "attention_mask": att}
        if images is not None:
            done: dict = {}  # one strip asked several times in a batch (e.g. once per steering target): tile it once
            tiles = []
            for i, im in enumerate(images):
                boxes = None if tile_boxes is None else tile_boxes[i]
                key = (id(im), None if boxes is None else tuple(tuple(float(v) for v in b) for b in boxes))
                if key not in done:
                    done[key] = self.tiles(im, boxes)
                tiles.append(done[key])
            data["pixel_values"] = self.normalize(np.concatenate(tiles))
        return BatchFeature(data=data, tensor_type=None if return_tensors == "pt" else return_tensors)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """The processor's settings as saved in its JSON config (tiles, sizes, normalisation, image token)."""
        return {"processor_class": type(self).__name__, "n_tiles": self.n_tiles, "tile_size": self.tile_size,
                "patch_size": self.patch_size, "image_mean": self.image_mean, "image_std": self.image_std,
                "image_token": self.image_token, "resample": "PIL.Image.BOX"}

    def save_pretrained(self, save_directory: str, **kwargs):
        """Write the tokenizer and the processor's JSON config to `save_directory` (Hugging Face layout)."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        with open(os.path.join(save_directory, PROCESSOR_CONFIG), "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        return save_directory

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs) -> "ComicTileProcessor":
        """Read a processor written by `save_pretrained` from `directory`; a clear error when its config is missing."""
        cfg, tok = read_saved_processor(directory, PROCESSOR_CONFIG, cls.__name__)
        return cls(tok, n_tiles=cfg["n_tiles"], tile_size=cfg["tile_size"], patch_size=cfg["patch_size"],
                   image_mean=cfg["image_mean"], image_std=cfg["image_std"])

    def __repr__(self):
        return (f"ComicTileProcessor(n_tiles={self.n_tiles}, tile_size={self.tile_size}, "
                f"tokens_per_tile={self.tokens_per_tile}, vocab={len(self.tokenizer)})")
