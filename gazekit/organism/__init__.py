"""The embedded model organism: a tiny LLaVA-class comic VLM trained from scratch, in which gaze heads exist and
steer. `gazekit.load()` returns it by default; see MODEL_CARD.md for what it is and what it shows.
"""
from __future__ import annotations

import json
import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
META_FILE = "gazekit_meta.json"


def load_meta(path: str | None = None) -> dict:
    """The organism's gazekit metadata (recommended_k, default panels, ...)."""
    p = os.path.join(path or WEIGHTS_DIR, META_FILE)
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def load_organism(path: str | None = None, quantize: str | None = None):
    """(model, processor) of the organism in `path` (default: the shipped weights), in eval mode, text attention
    "sdpa". Loads from local files only."""
    if quantize not in (None, "4bit"):
        raise ValueError(f"quantize must be None or '4bit', got {quantize!r}")
    from transformers import LlavaForConditionalGeneration

    from gazekit.organism.processor import ComicTileProcessor
    path = path or WEIGHTS_DIR
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"no organism weights in {path}; train them with "
                                "`python -m gazekit.organism.train --out DIR` and pass that DIR")
    kwargs = {}
    if quantize == "4bit":
        # NF4 for the language model's linear layers (the tutorial's 4-bit path); the vision tower, projector and
        # output head stay in full precision, as gazekit.load does for real models.
        import torch
        from transformers import BitsAndBytesConfig

        from gazekit.models._compat import quiet_bitsandbytes_cpu_kernel_warning
        quiet_bitsandbytes_cpu_kernel_warning()
        kwargs = dict(quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]), device_map="cpu")
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True, **kwargs)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    model.eval()
    return model, ComicTileProcessor.from_pretrained(path)


__all__ = ["WEIGHTS_DIR", "load_organism", "load_meta"]
