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


def load_weights(path: str, quantize: str | None, model_class, processor_class, attn_implementation,
                 train_command: str):
    """(model, processor) from a folder of organism weights, either family: local files only, safetensors, eval
    mode, the given attention implementation; with quantize="4bit" NF4 linear layers in the language model on the
    CPU, the family adapter's `full_precision_modules` (vision tower, projector, output head) kept as they are, as
    gazekit.load does for real models.

    Args:
        path: the folder (`model.safetensors` + the processor's files).
        quantize: None or "4bit".
        model_class, processor_class: the Hugging Face model class and the organism's processor class.
        attn_implementation: what `model.set_attn_implementation` gets.
        train_command: the command that writes such a folder (named in the error when there are no weights).

    Raises:
        FileNotFoundError: no weights in `path`; the message says how to train them."""
    if quantize not in (None, "4bit"):
        raise ValueError(f"quantize must be None or '4bit', got {quantize!r}")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"no organism weights in {path}; train them with `{train_command}` and pass that DIR")
    processor = processor_class.from_pretrained(path)
    kwargs = {}
    if quantize == "4bit":
        import torch
        from transformers import AutoConfig

        from gazekit.models.adapters import adapter_class_for
        from gazekit.models.vlm import four_bit_config

        adapter_cls = adapter_class_for(AutoConfig.from_pretrained(path, local_files_only=True), processor)
        kwargs = dict(quantization_config=four_bit_config(adapter_cls, torch.float32), device_map="cpu")
    model = model_class.from_pretrained(path, local_files_only=True, use_safetensors=True, **kwargs)
    model.set_attn_implementation(attn_implementation)
    return model.eval(), processor


def as_vlm(load, path: str, quantize: str | None, dtype, adapter_class, name: str):
    """A loaded organism as a gazekit `VLM`: `load(path, quantize=...)` without the "Loading weights" progress bar
    (a few local megabytes: only noise, and volatile text in notebook outputs; the user's setting is restored), cast
    to `dtype`, on the GPU when CUDA is available (unless 4-bit, which stays where bitsandbytes put it; `vlm.device`
    always tells the truth), with the folder's metadata (`recommended_k`, ...).

    Args:
        load: `load_organism` or `gazekit.organism.qwen.load_qwen_organism`.
        path: the weights folder.
        quantize: None or "4bit".
        dtype: None (float32), a torch dtype or its name.
        adapter_class: the family adapter (`adapter_class(model, processor)`).
        name: the VLM's name."""
    import torch
    from transformers.utils import logging as hf_logging

    from gazekit.models.vlm import VLM, resolve_dtype

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, processor = load(path, quantize=quantize)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if dtype is not None:
        model.to(resolve_dtype(dtype, torch.device("cpu")))
    if not quantize and torch.cuda.is_available():
        model.to("cuda")
    meta = load_meta(path)
    return VLM(model.eval(), processor, adapter_class(model, processor), name=name,
               recommended_k=meta.get("recommended_k"), meta=meta)


def load_organism(path: str | None = None, quantize: str | None = None):
    """(model, processor) of the organism in `path` (default: the shipped weights), in eval mode, text attention
    "sdpa". Loads from local files only.

    Args:
        path: a folder of organism weights (`model.safetensors` + processor files); default the shipped ones.
        quantize: None, or "4bit": NF4 text model on the CPU, the adapter's `full_precision_modules` kept.

    Raises:
        FileNotFoundError: no weights in `path`; the message says how to train them."""
    from transformers import LlavaForConditionalGeneration

    from gazekit.organism.processor import ComicTileProcessor

    return load_weights(path or WEIGHTS_DIR, quantize, LlavaForConditionalGeneration, ComicTileProcessor,
                        {"text_config": "sdpa", "vision_config": "sdpa"}, "python -m gazekit.organism.train --out DIR")


def load_vlm(quantize: str | None = None, dtype=None):
    """The shipped organism as a gazekit `VLM` (what `gazekit.load()` returns): on the GPU when CUDA is available
    (unless 4-bit), with its metadata (`recommended_k`, ...).

    Args:
        quantize: None, or "4bit" (NF4 text model on the CPU).
        dtype: None (float32), a torch dtype or its name."""
    return as_vlm(load_organism, WEIGHTS_DIR, quantize, dtype, OrganismAdapter, "gazekit/comic-organism")


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
