"""The family layout: one module per family, adapters chosen by `adapter_class_for` (priority, not special cases),
and one 4-bit skip list per adapter (`full_precision_modules`) that both 4-bit load paths hand to bitsandbytes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import gazekit
import gazekit.models.adapters as adapters
from gazekit.models.adapters import Adapter, UnsupportedModelError, adapter_class_for, register
from gazekit.models.families.llava import LlavaAdapter
from gazekit.models.families.qwen2_vl import Qwen2VLAdapter
from gazekit.organism.adapter import OrganismAdapter
from gazekit.organism.processor import ComicTileProcessor
from gazekit import testing as tm

MODELS_DIR = Path(gazekit.__file__).parent / "models"


class _Sentinel(Exception):
    """Raised by a patched from_pretrained once it has recorded its arguments (no weights are read)."""


# ------------------------------------------------------------------------------------------------ layout
def test_no_module_in_models_mentions_the_organism():
    """gazekit/models/ is family-generic: the organism registers its own adapter and default model from
    gazekit/organism/, so nothing under models/ may name it (no special case can hide there)."""
    mentions = [f"{p.relative_to(MODELS_DIR)}:{i}" for p in sorted(MODELS_DIR.rglob("*.py"))
                for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                if re.search("organism", line, re.IGNORECASE)]
    assert not mentions, f"gazekit/models/ mentions the organism at {mentions}"


def test_each_registered_adapter_lives_in_its_own_family_module():
    modules = {c.family: c.__module__ for c in adapters._REGISTRY}
    assert modules["gazekit-organism"] == "gazekit.organism.adapter"
    for family, module in modules.items():
        if family != "gazekit-organism":
            assert module == f"gazekit.models.families.{family}", (family, module)
    # adapters.py keeps only the base class, the registry and the lookup
    defined = [c for c in vars(adapters).values() if isinstance(c, type) and issubclass(c, Adapter)]
    assert defined == [Adapter]


# ------------------------------------------------------------------------------------------------ lookup
@pytest.fixture
def registry(monkeypatch):
    """The registry as a copy: adapters registered in a test vanish afterwards."""
    monkeypatch.setattr(adapters, "_REGISTRY", list(adapters._REGISTRY))
    return adapters._REGISTRY


def _config(family):
    return tm.build(family)[0].config


@pytest.fixture(scope="module")
def llava_config():
    return _config("llava")


def test_priority_picks_the_organism_only_with_its_processor(llava_config):
    assert adapter_class_for(llava_config, ComicTileProcessor()) is OrganismAdapter
    assert adapter_class_for(llava_config) is LlavaAdapter  # processor not known yet: the general llava adapter
    assert adapter_class_for(llava_config, tm.build("llava")[1]) is LlavaAdapter
    # both match the organism; priority, not a special case in LlavaAdapter.matches, decides
    assert LlavaAdapter.matches(llava_config, ComicTileProcessor())
    assert OrganismAdapter.priority > LlavaAdapter.priority


def test_priority_order_then_last_registered(registry, llava_config):
    class Low(LlavaAdapter):
        family, priority = "llava-low", -1

    class Mine(LlavaAdapter):
        family = "llava-mine"

    class High(LlavaAdapter):
        family, priority = "llava-high", 5

    register(Low)
    assert adapter_class_for(llava_config) is LlavaAdapter  # lower priority loses
    register(Mine)
    assert adapter_class_for(llava_config) is Mine  # equal priority: the one registered last replaces the built-in
    register(High)
    assert adapter_class_for(llava_config) is High
    assert adapter_class_for(llava_config, ComicTileProcessor()) is OrganismAdapter  # 10 > 5


def test_register_refuses_what_it_cannot_use(registry):
    with pytest.raises(TypeError, match="Adapter subclass"):
        register(object)

    class Nameless(Adapter):
        pass

    with pytest.raises(ValueError, match="must set `family`.*`model_types`"):
        register(Nameless)


def _unsupported_message():
    return re.escape("gazekit has no adapter for model_type 'llama'. Supported families: " +
                     ", ".join(gazekit.supported_families())) + r".*gazekit/models/families/.*@register.*" \
        r"docs/adding-a-family\.md"


def test_adapter_class_for_unsupported_model_names_the_fix():
    from transformers import LlamaConfig

    with pytest.raises(UnsupportedModelError, match=_unsupported_message()):
        adapter_class_for(LlamaConfig())


def test_load_of_an_unsupported_folder_fails_before_any_weights(tmp_path):
    """gazekit.load(path) checks support from the config alone (the folder has no weights to download) and says
    the same as adapter_class_for."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=_unsupported_message()):
        gazekit.load(str(tmp_path))


def test_load_refuses_a_model_without_a_config():
    with pytest.raises(TypeError, match="Hugging Face transformers model"):
        gazekit.load(torch.nn.Linear(2, 2), object())


# ------------------------------------------------------------------------------------------------ 4-bit skip list
@pytest.mark.parametrize("family", [*tm.FAMILIES, "gazekit-organism"])
def test_full_precision_modules_name_the_vision_side_and_head(family):
    """Every listed module exists in the family's real class, the vision tower and the output head are among them,
    and none of them holds a text-model layer (those are what 4-bit quantises)."""
    if family == "gazekit-organism":
        from gazekit.organism.model import build_model

        processor = ComicTileProcessor()
        model = build_model(processor).eval()
    else:
        model, processor = tm.build(family)
    vlm = gazekit.load(model, processor)
    names = dict(model.named_modules())
    listed = vlm.adapter.full_precision_modules
    assert type(vlm.adapter).full_precision_modules is not Adapter.full_precision_modules  # its own list
    assert all(n in names for n in listed), [n for n in listed if n not in names]
    assert "lm_head" in listed
    text = {id(m) for m in vlm.adapter.language_model().modules()}
    vision = [m for n in listed for m in names[n].modules()]
    assert not any(id(m) in text for m in vision)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = [n for n in linears if any(n == p or n.startswith(p + ".") for p in listed)]
    assert set(linears) - set(kept) == {n for n, m in model.named_modules()
                                        if isinstance(m, torch.nn.Linear) and id(m) in text}


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_pretrained_4bit_load_hands_the_adapters_list_to_bitsandbytes(family, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    model, processor = tm.build(family)
    model.config.save_pretrained(tmp_path)
    seen = {}

    def record(path, **kwargs):
        seen.update(kwargs)
        raise _Sentinel

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", record)
    with pytest.raises(_Sentinel):
        gazekit.load(str(tmp_path), processor, quantize="4bit")
    q = seen["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    want = adapter_class_for(model.config, processor)
    assert want.family == family
    assert q.llm_int8_skip_modules == list(want.full_precision_modules)


def test_organism_4bit_load_hands_its_adapters_list_to_bitsandbytes(monkeypatch):
    import transformers
    from transformers import BitsAndBytesConfig

    from gazekit.organism import load_organism

    seen = {}

    def record(path, **kwargs):
        seen.update(kwargs)
        raise _Sentinel

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", record)
    with pytest.raises(_Sentinel):
        load_organism(quantize="4bit")
    q = seen["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.llm_int8_skip_modules == list(OrganismAdapter.full_precision_modules)
    # the organism is a llava model: the same modules as the llava family, by name
    assert OrganismAdapter.full_precision_modules == LlavaAdapter.full_precision_modules


def test_qwen_family_chain_keeps_one_list():
    from gazekit.models.families.qwen2_5_vl import Qwen2_5_VLAdapter
    from gazekit.models.families.qwen3_vl import Qwen3VLAdapter

    assert Qwen2_5_VLAdapter.full_precision_modules == Qwen3VLAdapter.full_precision_modules == \
        Qwen2VLAdapter.full_precision_modules == ("model.visual", "lm_head")
