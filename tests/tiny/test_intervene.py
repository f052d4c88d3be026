"""`gazekit.intervene` and `gazekit.Intervention`: user-written interventions reach the same hooks as the built-in
verbs, and every forward is bound to its own prepared input (no "last prepared input" on the VLM)."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import gazekit
from gazekit import testing as tm
from gazekit.regions import panel_question

torch.set_num_threads(1)
QUESTION = panel_question(2)


@pytest.fixture(scope="module")
def vlm(qwen):
    return qwen  # conftest's tiny Qwen2-VL, built once for this module


@pytest.fixture(scope="module")
def strip():
    return tm.make_strip()


class LastRow(gazekit.Intervention):
    """A user's recorder: every layer's last-row attention."""

    def __init__(self):
        self.rows = {}

    def record(self, session, layer, probs, value_norms, n_keys):
        self.rows[layer] = probs[0].double().clone()


def test_a_user_recorder_equals_output_attentions(vlm, strip):
    prep = vlm.prepare(strip, QUESTION)
    rec = LastRow()
    with gazekit.intervene(vlm, rec) as got:
        vlm.forward(prep, use_cache=False)
    assert got == (rec,)
    with torch.no_grad():
        before = vlm.model.config.get_text_config()._attn_implementation
        vlm.model.set_attn_implementation({"text_config": "eager"})
        try:
            att = vlm.model(**prep, output_attentions=True, use_cache=False).attentions
        finally:
            vlm.model.set_attn_implementation({"text_config": before})
    assert sorted(rec.rows) == list(range(vlm.n_layers))
    for layer, a in enumerate(att):
        assert (rec.rows[layer] - a[0, :, -1].double()).abs().max().item() < 1e-6


class DuckBias:
    """A user's steerer without subclassing: +B/-B on chosen heads, the paper's boost_suppress."""

    def __init__(self, heads, positions, image, strength):
        self.heads, self.positions, self.image, self.strength = heads, positions, image, strength

    def key_bias(self, session, layer, n_keys, device):
        hs = [h for l, h in self.heads if l == layer]
        if not hs:
            return None
        bias = torch.zeros(session.total_len)
        bias[self.image] = -self.strength
        bias[self.positions] = self.strength
        return hs, bias[session.total_len - n_keys:].to(device)


def test_a_user_key_bias_equals_steer(vlm, strip):
    prep = vlm.prepare(strip, QUESTION)
    heads = [(0, 1), (1, 2)]
    with gazekit.steer(vlm, heads, target=4):
        want = vlm.generate(prep, max_new_tokens=3, min_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    duck = DuckBias(heads, prep.regions[3], prep.image_positions, 1e4)
    with gazekit.intervene(vlm, duck):
        got = vlm.generate(prep, max_new_tokens=3, min_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        assert (a - b).abs().max().item() <= 1e-5
    with torch.no_grad():
        plain = vlm.model(**prep).logits[:, -1]
    assert (want.logits[0] - plain).abs().max().item() > 1e-3  # steering did something


def test_a_user_output_edit_equals_ablate_zero(vlm, strip):
    class Silence(gazekit.Intervention):
        def edit_output(self, session, layer, output, query, key, value, attention_mask):
            if layer == 1:
                output[:, :, 3] = 0

    prep = vlm.prepare(strip, QUESTION)
    with gazekit.intervene(vlm, Silence()):
        got = vlm.forward(prep).logits
    with gazekit.ablate(vlm, [(1, 3)], how="zero"):
        want = vlm.forward(prep).logits
    assert torch.equal(got, want)


def test_each_forward_is_bound_to_its_own_prepared_input(vlm, strip):
    """Steering resolves its target in the input the forward runs, not in the last one prepared: preparing another
    strip (different panel widths, so different region tokens) in between changes nothing."""
    other = tm.make_strip(height=strip.image.size[1], widths=(96, 64, 64, 96, 64, 64), seed=5)
    head = [(vlm.n_layers - 1, 1)]
    prep = vlm.prepare(strip, QUESTION)
    with gazekit.steer(vlm, head, target=3):
        alone = vlm.forward(prep).logits
        cap_alone = gazekit.capture(vlm, strip, QUESTION)
        p_other = vlm.prepare(other, QUESTION)
        assert not all(torch.equal(a, b) for a, b in zip(p_other.regions, prep.regions))
        raw = vlm.model(**prep).logits  # a raw call: bound by its own input_ids tensor
        bound = vlm.forward(prep).logits
        gen = vlm.generate(prep, max_new_tokens=2, min_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(raw, alone) and torch.equal(bound, alone)
    assert (gen.logits[0] - alone[:, -1]).abs().max().item() <= 1e-5
    assert cap_alone[head[0][0], head[0][1], 2] / cap_alone[head[0][0], head[0][1]].sum() >= 0.99


def test_a_prepared_input_is_not_kept_alive(vlm, strip):
    """Nothing remembers the last input: once the caller drops it, it is freed (its pixels, ids and regions)."""
    prep = vlm.prepare(strip, QUESTION)
    with gazekit.steer(vlm, [(0, 0)], target=1):
        vlm.generate(prep, max_new_tokens=2)
    vlm.generate(prep, max_new_tokens=2)
    ref = weakref.ref(prep)
    del prep
    gc.collect()
    assert ref() is None


def test_an_unbound_forward_gets_a_clear_error(vlm, strip):
    prep = vlm.prepare(strip, QUESTION)
    with pytest.raises(RuntimeError, match=r"no prepared input.*vlm\.generate\(prepared\)"):
        with gazekit.steer(vlm, [(0, 0)], target=1):
            vlm.model.generate(**prep, max_new_tokens=1)  # generate copies its inputs: not recognisable
    assert vlm.interventions == ()


def test_intervene_refuses_objects_without_hooks(vlm):
    with pytest.raises(TypeError, match="not an instance: pass LastRow"):
        with gazekit.intervene(vlm, LastRow):
            pass
    with pytest.raises(TypeError, match="implements none of the intervention hooks"):
        with gazekit.intervene(vlm, object()):
            pass
    with pytest.raises(TypeError, match="implements none"):
        with gazekit.intervene(vlm, gazekit.Intervention.__new__(type("Empty", (gazekit.Intervention,), {}))):
            pass
    assert vlm.interventions == ()


def test_intervene_nests_and_restores_on_exceptions(vlm, strip):
    model = vlm.model
    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = model(**prep).logits
    snap = tm.model_snapshot(model)
    outer, inner = LastRow(), LastRow()
    with pytest.raises(RuntimeError, match="boom"):
        with gazekit.intervene(vlm, outer):
            with gazekit.intervene(vlm, inner):
                assert vlm.interventions == (outer, inner)
                vlm.forward(prep)
                raise RuntimeError("boom")
    assert outer.rows and inner.rows
    assert vlm.interventions == ()
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    tm.assert_restored(model, snap)
    with torch.no_grad():
        assert torch.equal(model(**prep).logits, ref)
    assert np.isfinite(ref.numpy()).all()
