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


def load_organism(path: str | None = None):
    """(model, processor) of the organism in `path` (default: the shipped weights), in eval mode, text attention
    "sdpa". Loads from local files only."""
    from transformers import LlavaForConditionalGeneration

    from gazekit.organism.processor import ComicTileProcessor
    path = path or WEIGHTS_DIR
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"no organism weights in {path}; train them with "
                                "`python -m gazekit.organism.train --out DIR` and pass that DIR")
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    model.eval()
    return model, ComicTileProcessor.from_pretrained(path)


__all__ = ["WEIGHTS_DIR", "load_organism", "load_meta"]
