"""Version- and platform-specific workarounds for the libraries gazekit stands on, kept in one place."""
from __future__ import annotations

import logging

# bitsandbytes >= 0.49, on CPUs with AVX512-BF16, tries at import to fetch an optional fused 4-bit GEMM from the
# `kernels` package (a hub download) and logs a WARNING when it cannot: "Failed to load CPU gemm_4bit_forward from
# kernels-community: No module named 'kernels' ...". It then uses its own CPU kernels, so 4-bit results are the
# same; only speed differs. Offline (and for every tutorial user) that warning is noise that reads like an error.
_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_CPU_MESSAGE = "Failed to load CPU gemm_4bit_forward"


class _DropOptionalKernelWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BNB_CPU_MESSAGE)


def quiet_bitsandbytes_cpu_kernel_warning() -> None:
    """Drop bitsandbytes' warning about the optional `kernels-community` CPU kernel (see above); every other
    bitsandbytes message still shows. Call before bitsandbytes is first imported; calling twice is harmless."""
    logger = logging.getLogger(_BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropOptionalKernelWarning) for f in logger.filters):
        logger.addFilter(_DropOptionalKernelWarning())


# -- transformers' model layout, probed once per class ------------------------------------------------------------
# transformers 4.52 moved the text decoder of every VLM from `model.language_model.model` to
# `model.model.language_model` (Idefics3/SmolVLM: `model.model.text_model`), moved Qwen-VL's M-RoPE `rope_deltas` from
# the outer model to its inner `.model`, and aliased LLaVA's `image_token_index` as `image_token_id`. Adapters ask
# these functions instead of probing attributes themselves; each answer is found once per class and cached.
_LANGUAGE_MODEL_PATHS = (("model", "language_model"), ("model", "text_model"), ("language_model", "model"),
                         ("language_model",), ("text_model",))
_ROPE_DELTAS_OWNERS = (("model",), ())
_language_model_path: dict[type, tuple[str, ...]] = {}
_rope_deltas_owner_path: dict[type, tuple[str, ...]] = {}
_image_token_attribute: dict[type, str] = {}


def _follow(obj, path: tuple[str, ...]):
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def language_model(model):
    """The text decoder inside a vision-language model: the module whose `.layers` hold one decoder layer each.

    Args:
        model: a Hugging Face vision-language model (e.g. `LlavaForConditionalGeneration`).

    Returns:
        the decoder module, or None when no known layout of this transformers version or an earlier one fits
        (the caller says which model it could not read). The layout is probed once per model class."""
    cls = type(model)
    path = _language_model_path.get(cls)
    if path is None:
        path = next((p for p in _LANGUAGE_MODEL_PATHS if hasattr(_follow(model, p), "layers")), None)
        if path is None:
            return None
        _language_model_path[cls] = path
    return _follow(model, path)


def rope_deltas(model):
    """The M-RoPE position offset a Qwen-VL model stored during its last prefill (text after the image continues from
    it), wherever this transformers version keeps it (the inner `.model` since 4.52, the outer model before).

    Args:
        model: a Qwen2-VL-class model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) that has run a forward on a prompt.

    Returns:
        the stored `rope_deltas` tensor [B, 1].

    Raises:
        AttributeError: neither layout holds `rope_deltas` (no forward yet, or an unknown layout)."""
    cls = type(model)
    path = _rope_deltas_owner_path.get(cls)
    if path is None:
        path = next((p for p in _ROPE_DELTAS_OWNERS if getattr(_follow(model, p), "rope_deltas", None) is not None),
                    None)
        if path is None:
            raise AttributeError(f"{cls.__name__} holds no rope_deltas (on .model or itself): run a forward on the "
                                 "prompt first")
        _rope_deltas_owner_path[cls] = path
    return _follow(model, path).rope_deltas


def image_token_id(config):
    """The image placeholder token id from a model config, under either name transformers has used for it
    (`image_token_id`; `image_token_index` in older LLaVA-style configs).

    Args:
        config: the model's `PretrainedConfig`.

    Returns:
        the id as an int, or None when the config names no image token (the caller falls back to the
        processor's `image_token`). Which attribute holds it is probed once per config class."""
    cls = type(config)
    name = _image_token_attribute.get(cls)
    if name is None:
        name = next((n for n in ("image_token_id", "image_token_index") if getattr(config, n, None) is not None), None)
        if name is None:
            return None
        _image_token_attribute[cls] = name
    value = getattr(config, name, None)
    return None if value is None else int(value)


# -- the model's forward signature, probed once per class ----------------------------------------------------------
# transformers 5.2x renamed the forward's `past_key_values` argument to `cache`; `logits_to_keep` (which skips the
# [tokens x vocab] output projection for all but the last positions) exists on most, not all, model classes.
_forward_params: dict[type, frozenset] = {}


def _params(model) -> frozenset:
    cls = type(model)
    found = _forward_params.get(cls)
    if found is None:
        import inspect

        found = _forward_params[cls] = frozenset(inspect.signature(model.forward).parameters)
    return found


def cache_kwarg(model) -> str:
    """The name under which this model's forward takes a KV cache: "cache" (transformers 5.2x) or
    "past_key_values" (before).

    Args:
        model: a Hugging Face model."""
    return "cache" if "cache" in _params(model) else "past_key_values"


def logits_to_keep(model) -> dict:
    """`{"logits_to_keep": 1}` where this model's forward takes it (only the last position's logits are
    computed), else {} — for forwards whose logits are never read.

    Args:
        model: a Hugging Face model."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _params(model) else {}


def cache_of(kwargs: dict):
    """The KV cache handed to a forward (under either name), or None.

    Args:
        kwargs: the forward's keyword arguments (as a forward pre-hook sees them)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def past_length(kwargs: dict) -> int:
    """How many tokens the KV cache handed to a forward already holds (0 without a cache).

    Args:
        kwargs: the forward's keyword arguments."""
    cache = cache_of(kwargs)
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


# -- attention functions and implementation names -----------------------------------------------------------------
_eager_of: dict[type, object] = {}
_sdpa = None


def stock_sdpa():
    """transformers' own sdpa attention function (imported once)."""
    global _sdpa
    if _sdpa is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _sdpa = sdpa_attention_forward
    return _sdpa


def stock_eager(module):
    """The eager attention function of an attention module's modelling file (found once per module class).

    Args:
        module: an attention module (e.g. `LlamaAttention`).

    Raises:
        RuntimeError: the modelling file defines none (the model needs sdpa)."""
    cls = type(module)
    fn = _eager_of.get(cls)
    if fn is None:
        import sys

        fn = getattr(sys.modules[cls.__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{cls.__module__} has no eager_attention_forward; use sdpa for this model")
        _eager_of[cls] = fn
    return fn


def set_own_attn_implementation(config, name) -> None:
    """Set one config's attention implementation, not its sub-configs' (the public setter also sets those: a
    config that is both the text and the top-level config would change its vision tower's too).

    Args:
        config: a `PretrainedConfig`.
        name: the implementation name (e.g. "sdpa", or a registered one)."""
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = name
    else:
        config._attn_implementation = name
