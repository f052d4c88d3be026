"""The offline tiny fixtures behave like the real families: image-token layout, forward, generate, eager attention
output (the oracle of the contract tests), per-sub-model attention selection, save/reload and 4-bit loading."""
from __future__ import annotations

import time

import pytest
import torch

from gazekit import testing as tm

torch.set_num_threads(1)

QUESTION = "What is happening in the first panel from the left?"


def chat(processor, text=QUESTION):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def encode(processor, image, text=QUESTION):
    return processor(images=[image], text=[chat(processor, text)], return_tensors="pt")


@pytest.fixture(scope="module")
def strip():
    return tm.make_strip()


@pytest.fixture(scope="module", params=tm.FAMILIES)
def built(request, strip):
    t0 = time.perf_counter()
    model, processor = tm.build(request.param)
    seconds = time.perf_counter() - t0
    return request.param, model, processor, encode(processor, strip.image), seconds


def image_token_id(model):
    cfg = model.config
    return cfg.image_token_id if getattr(cfg, "image_token_id", None) is not None else cfg.image_token_index


def runs_of(ids, token):
    """(start, length) of each maximal run of `token` in the 1-D list `ids`."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == token:
            j = i
            while j < len(ids) and ids[j] == token:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def expected_layout(family, model, processor, inputs):
    """Image-token runs the model expects, computed from the model config and the pixel inputs (not from ids)."""
    cfg = model.config
    if family.startswith("qwen"):
        merge = cfg.vision_config.spatial_merge_size
        return [int(inputs["image_grid_thw"][0].prod()) // merge**2]
    if family == "llava":
        v = cfg.vision_config
        return [(v.image_size // v.patch_size) ** 2]  # CLS dropped by the "default" feature strategy
    if family in ("idefics3", "smolvlm"):
        v = cfg.vision_config
        per_tile = (v.image_size // v.patch_size) ** 2 // cfg.scale_factor**2
        return [per_tile] * inputs["pixel_values"].shape[1]  # each tile, then the global thumbnail
    if family == "gemma3":
        return [cfg.mm_tokens_per_image]
    raise AssertionError(family)


def test_builds_fast_and_small(built):
    family, model, processor, _, seconds = built
    assert seconds < 2.0, f"{family} fixture took {seconds:.2f}s to build"
    text = model.config.get_text_config()
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (2, 4, 2)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert text._attn_implementation == "sdpa"
    # bitsandbytes' CPU 4-bit kernel needs these divisibilities on every quantizable Linear
    bad = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
           and (m.in_features % 64 or m.out_features % 32)]
    assert not bad, f"{family}: Linear layers unfit for the CPU 4-bit kernel: {bad}"


def test_image_token_layout(built):
    family, model, processor, inputs, _ = built
    ids = inputs["input_ids"][0].tolist()
    img = image_token_id(model)
    runs = runs_of(ids, img)
    assert [n for _, n in runs] == expected_layout(family, model, processor, inputs)
    tok = processor.tokenizer
    before = [tok.convert_ids_to_tokens(ids[s - 1]) for s, _ in runs]
    after = [tok.convert_ids_to_tokens(ids[s + n]) for s, n in runs]
    if family.startswith("qwen"):
        assert (before, after) == (["<|vision_start|>"], ["<|vision_end|>"])
    elif family == "llava":
        assert after == ["Ċ"]  # "<image>\n" then the question
    elif family in ("idefics3", "smolvlm"):
        n_tiles = len(runs) - 1
        assert before == [f"<row_1_col_{c + 1}>" for c in range(n_tiles)] + ["<global-img>"]
        assert after[-1] == "<fake_token_around_image>"
    elif family == "gemma3":
        assert (before, after) == (["<start_of_image>"], ["<end_of_image>"])
    # the prompt ends with the generation prompt, after every image token
    assert runs[-1][0] + runs[-1][1] < len(ids) - 3


def test_forward_and_generate(built):
    family, model, processor, inputs, _ = built
    with torch.no_grad():
        logits = model(**inputs).logits
    S = inputs["input_ids"].shape[1]
    assert logits.shape == (1, S, model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()
    out1 = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    out2 = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out1.shape == (1, S + 3) and torch.equal(out1[:, :S], inputs["input_ids"])
    assert torch.equal(out1, out2)
    # greedy decoding's first token is the prefill's argmax
    assert out1[0, S].item() == logits[0, -1].argmax().item()


def test_eager_output_attentions(built):
    family, model, processor, inputs, _ = built
    with torch.no_grad():
        ref = model(**inputs).logits
    model.set_attn_implementation({"text_config": "eager"})
    try:
        assert model.config.vision_config._attn_implementation == "sdpa"
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    text = model.config.get_text_config()
    att = out.attentions
    S = inputs["input_ids"].shape[1]
    assert len(att) == text.num_hidden_layers
    assert all(a.shape == (1, text.num_attention_heads, S, S) for a in att)
    assert (out.logits - ref).abs().max().item() < 1e-4
    for a in att:
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
    img_pos = [s for s, n in runs_of(inputs["input_ids"][0].tolist(), image_token_id(model)) for s in range(s, s + n)]
    last_img = img_pos[-1]
    for a in att:
        upper = torch.triu(a[0], diagonal=1)
        # text after the image is strictly causal in every family
        assert upper[:, last_img + 1:].abs().max().item() == 0
        if family == "gemma3":
            # Gemma 3 lets image tokens attend to each other both ways (bidirectional image block)
            assert a[0, :, img_pos[0], last_img].min().item() > 0
            assert upper[:, : img_pos[0]].abs().max().item() == 0
        else:
            assert upper.abs().max().item() == 0


def test_custom_attention_on_text_model_only(built):
    """The mechanism the core relies on: a registered attention function set on the text model only."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    family, model, processor, inputs, _ = built
    calls = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, query.shape[1], key.shape[1], query.shape[2]))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("fixture_probe", probe)
    AttentionMaskInterface.register("fixture_probe", sdpa_mask)
    with torch.no_grad():
        ref = model(**inputs).logits
    model.set_attn_implementation({"text_config": "fixture_probe"})
    try:
        with torch.no_grad():
            out = model(**inputs).logits
        gen = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    S = inputs["input_ids"].shape[1]
    n_layers = model.config.get_text_config().num_hidden_layers
    # prefill (forward), prefill (generate), one decode step: text layers only, query heads 4, kv heads 2
    assert calls[:n_layers] == [(i, 4, 2, S) for i in range(n_layers)]
    assert calls[2 * n_layers:] == [(i, 4, 2, 1) for i in range(n_layers)]
    assert len(calls) == 3 * n_layers
    assert torch.equal(out, ref)
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    assert gen.shape[1] == S + 2


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_save_reload_and_4bit(family, strip, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
    from transformers.processing_utils import ProcessorMixin

    path = tm.save_fixture(family, tmp_path / family)
    model, processor = tm.build(family)
    inputs = encode(processor, strip.image)
    processor2 = tm.load_processor(family, path)
    inputs2 = encode(processor2, strip.image)
    assert set(inputs2) == set(inputs) and all(torch.equal(inputs2[k], inputs[k]) for k in inputs)

    # What a loader meets offline: AutoProcessor gives only the tokenizer for the families whose processor wants a
    # torchvision video processor; the loader must build their processor class explicitly (as load_processor does).
    auto = AutoProcessor.from_pretrained(path)
    full_processor_expected = family in ("llava", "idefics3", "gemma3")
    assert isinstance(auto, ProcessorMixin) == full_processor_expected, type(auto).__name__

    reloaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        ref = model(**inputs).logits
        assert torch.equal(reloaded(**inputs).logits, ref)

    q = AutoModelForImageTextToText.from_pretrained(
        path, device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    # the text decoder is model.language_model in most families, model.text_model in Idefics3/SmolVLM
    text_linears = [(n, m) for n, m in q.get_decoder().named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(text_linears) == 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
    assert all(isinstance(m, bnb.nn.Linear4bit) for _, m in text_linears)
    with torch.no_grad():
        logits4 = q(**inputs).logits
    assert torch.isfinite(logits4).all()
    # NF4 perturbs but does not scramble: logits stay close to and correlated with float32
    rel = ((logits4 - ref).norm() / ref.norm()).item()
    print(f"{family}: 4-bit relative logit difference {rel:.4f}")
    assert rel < 0.5, f"{family}: 4-bit logits differ from float32 by {rel:.3f} (relative)"
    out = q.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
