"""The embedded model organism: a tiny LLaVA-class comic VLM trained from scratch, in which gaze heads exist and
steer. `gazekit.load()` returns it by default; see MODEL_CARD.md for what it is and what it shows.
"""
from __future__ import annotations

import json
import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
META_FILE = "gazekit_meta.json"


def load_meta(path: str | None = None) -> dict:
    """The organism's gazekit metadata (recommended_k, default panels, ...).

    Args:
        path: a folder of organism weights (default: the shipped ones).

    Returns:
        the metadata dict ({} when the folder has none)."""
    p = os.path.join(path or WEIGHTS_DIR, META_FILE)
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def load_organism(path: str | None = None, quantize: str | None = None):
    """(model, processor) of the organism in `path` (default: the shipped weights), in eval mode, text attention
    "sdpa". Loads from local files only.

    Args:
        path: a folder of organism weights (`model.safetensors` + processor files); default the shipped ones.
        quantize: None, or "4bit": NF4 text model on the CPU, the adapter's `full_precision_modules` kept.

    Raises:
        FileNotFoundError: no weights in `path`; the message says how to train them."""
    if quantize not in (None, "4bit"):
        raise ValueError(f"quantize must be None or '4bit', got {quantize!r}")
    from transformers import LlavaForConditionalGeneration

    from gazekit.organism.processor import ComicTileProcessor

    path = path or WEIGHTS_DIR
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"no organism weights in {path}; train them with "
                                "`python -m gazekit.organism.train --out DIR` and pass that DIR")
    processor = ComicTileProcessor.from_pretrained(path)
    kwargs = {}
    if quantize == "4bit":
        # NF4 for the language model's linear layers (the tutorial's 4-bit path); the adapter's full-precision
        # modules (vision tower, projector, output head) stay as they are, as gazekit.load does for real models
        import torch
        from transformers import AutoConfig

        from gazekit.models.adapters import adapter_class_for
        from gazekit.models.vlm import four_bit_config

        adapter_cls = adapter_class_for(AutoConfig.from_pretrained(path, local_files_only=True), processor)
        kwargs = dict(quantization_config=four_bit_config(adapter_cls, torch.float32), device_map="cpu")
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True, **kwargs)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    model.eval()
    return model, processor


def load_vlm(quantize: str | None = None, dtype=None):
    """The shipped organism as a gazekit `VLM` (what `gazekit.load()` returns): on the GPU when CUDA is available
    (unless 4-bit, which stays where bitsandbytes put it), with its metadata (`recommended_k`, ...).

    Args:
        quantize: None, or "4bit" (NF4 text model on the CPU).
        dtype: None (float32), a torch dtype or its name."""
    import torch
    # the organism is a few local megabytes: a "Loading weights" progress bar is only noise (and volatile text in
    # notebook outputs); restore the user's setting afterwards
    from transformers.utils import logging as hf_logging

    from gazekit.models.vlm import VLM, resolve_dtype

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, processor = load_organism(quantize=quantize)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if dtype is not None:
        model.to(resolve_dtype(dtype, torch.device("cpu")))
    if not quantize and torch.cuda.is_available():
        # where the tutorials say it runs ("on cuda" when a GPU is there); the 4-bit organism stays where
        # bitsandbytes put it. `vlm.device` (shown in repr) always tells the truth.
        model.to("cuda")
    meta = load_meta()
    return VLM(model.eval(), processor, OrganismAdapter(model, processor), name="gazekit/comic-organism",
               recommended_k=meta.get("recommended_k"), meta=meta)


def load_qwen_vlm(quantize: str | None = None, dtype=None):
    """The Qwen-class organism (`gazekit.load("organism-qwen")`): see `gazekit.organism.qwen`.

    Args:
        quantize: None, or "4bit" (NF4 text model on the CPU).
        dtype: None (float32), a torch dtype or its name."""
    from gazekit.organism.qwen import load_qwen_vlm as _load
    return _load(quantize=quantize, dtype=dtype)


# registers the organism's adapter with gazekit's adapter registry, makes the organism gazekit.load()'s default and
# the two organisms loadable by name
from gazekit.models.vlm import register_model_name, set_default_model  # noqa: E402
from gazekit.organism.adapter import OrganismAdapter  # noqa: E402

set_default_model(load_vlm)
register_model_name("organism", load_vlm)
register_model_name("organism-qwen", load_qwen_vlm)

__all__ = ["WEIGHTS_DIR", "OrganismAdapter", "load_organism", "load_meta", "load_qwen_vlm", "load_vlm"]
