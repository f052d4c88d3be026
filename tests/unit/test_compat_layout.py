"""The transformers layout probes in gazekit.models._compat: both layouts transformers has used are read, and each
answer is found once per class (a later instance is read through the cached path)."""
from __future__ import annotations

import pytest
import torch

from gazekit.models import _compat


class _Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Identity()])


class _Wrapper(torch.nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class NewLayout(torch.nn.Module):
    """transformers >= 4.52: model.model.language_model is the decoder."""

    def __init__(self):
        super().__init__()
        self.model = _Wrapper(language_model=_Decoder())


class TextModelLayout(torch.nn.Module):
    """Idefics3 / SmolVLM: model.model.text_model."""

    def __init__(self):
        super().__init__()
        self.model = _Wrapper(text_model=_Decoder())


class OldLayout(torch.nn.Module):
    """transformers < 4.52: model.language_model is a *ForCausalLM whose .model is the decoder."""

    def __init__(self):
        super().__init__()
        self.language_model = _Wrapper(model=_Decoder())


class NoDecoder(torch.nn.Module):
    pass


@pytest.mark.parametrize("cls, path", [(NewLayout, ("model", "language_model")),
                                       (TextModelLayout, ("model", "text_model")),
                                       (OldLayout, ("language_model", "model"))])
def test_language_model_is_found_in_each_layout_and_cached(cls, path, monkeypatch):
    monkeypatch.setattr(_compat, "_language_model_path", {})
    first = cls()
    found = _compat.language_model(first)
    assert isinstance(found, _Decoder) and found is _compat._follow(first, path)
    assert _compat._language_model_path == {cls: path}
    # probed once: with the candidate list gone, another instance is still read through the cached path
    monkeypatch.setattr(_compat, "_LANGUAGE_MODEL_PATHS", ())
    second = cls()
    assert _compat.language_model(second) is _compat._follow(second, path)


def test_language_model_unknown_layout_is_none_and_not_cached(monkeypatch):
    monkeypatch.setattr(_compat, "_language_model_path", {})
    assert _compat.language_model(NoDecoder()) is None
    assert _compat._language_model_path == {}


class InnerDeltas(torch.nn.Module):
    """transformers >= 4.52: the inner Qwen2VLModel keeps rope_deltas."""

    def __init__(self, value):
        super().__init__()
        self.model = _Wrapper()
        self.model.rope_deltas = value


class OuterDeltas(torch.nn.Module):
    """transformers < 4.52: the outer *ForConditionalGeneration kept them."""

    def __init__(self, value):
        super().__init__()
        self.model = _Wrapper()
        self.rope_deltas = value


@pytest.mark.parametrize("cls, path", [(InnerDeltas, ("model",)), (OuterDeltas, ())])
def test_rope_deltas_in_either_layout_cached_per_class(cls, path, monkeypatch):
    monkeypatch.setattr(_compat, "_rope_deltas_owner_path", {})
    a = torch.tensor([[3]])
    assert _compat.rope_deltas(cls(a)) is a
    assert _compat._rope_deltas_owner_path == {cls: path}
    monkeypatch.setattr(_compat, "_ROPE_DELTAS_OWNERS", ())
    b = torch.tensor([[5]])
    assert _compat.rope_deltas(cls(b)) is b


def test_rope_deltas_before_any_forward_says_so(monkeypatch):
    monkeypatch.setattr(_compat, "_rope_deltas_owner_path", {})
    with pytest.raises(AttributeError, match="run a forward on the prompt first"):
        _compat.rope_deltas(InnerDeltas(None))


def test_image_token_id_under_either_name():
    from transformers import LlavaConfig, Qwen2VLConfig

    assert _compat.image_token_id(LlavaConfig(image_token_index=7)) == 7  # the old name, aliased
    assert _compat.image_token_id(Qwen2VLConfig(image_token_id=9)) == 9

    class OldConfig:  # a config from before the alias: only image_token_index
        image_token_index = 4

    assert _compat.image_token_id(OldConfig()) == 4

    class NoImageToken:
        pass

    assert _compat.image_token_id(NoImageToken()) is None
