"""`gazekit.ablate` against an independent eager reference edit (tiny random LLaVA and Qwen2-VL).

The reference runs the stock model with eager attention and no gazekit code, without a KV cache, and edits the
named heads by hand in a forward pre-hook on each layer's `o_proj` (whose input is the heads' outputs side by side):
zero -> 0; mean -> the cumulative mean over positions 0..t; uniform -> the mean of `v_proj`'s value vectors (read by
a forward hook) over the image (or region) tokens at positions <= t. `ablate` must give its logits in the prefill
and in KV-cached decode steps (the reference re-runs the whole sequence), under sdpa and eager.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gazekit
from gazekit import testing as tm
from gazekit.testing import set_text_attn, text_attn
from gazekit.regions import panel_question

torch.set_num_threads(1)

QUESTION = panel_question(3)
TOL = 1e-5
FAMILIES = ["llava", "qwen2_vl"]
NEW_TOKENS = 3


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    model, processor = tm.build(request.param)
    return request.param, gazekit.load(model, processor), tm.make_strip()


def heads_of(vlm):
    return [(0, 1), (vlm.n_layers - 1, 2), (vlm.n_layers - 1, 0)]


def extend(prep, new_ids: torch.Tensor) -> dict:
    """`prep`'s inputs with the generated tokens appended (the whole sequence, for a cache-free forward)."""
    P = prep["input_ids"].shape[1]
    out = {}
    for k, v in prep.items():
        if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == P:
            fill = new_ids if k == "input_ids" else (torch.ones_like(new_ids) if k == "attention_mask"
                                                     else torch.zeros_like(new_ids))
            v = torch.cat([v, fill.to(v.dtype)], dim=1)
        out[k] = v
    return out


@torch.no_grad()
def reference_logits(vlm, inputs, heads, how, positions=None) -> torch.Tensor:
    """Logits of the stock model (eager, no cache) with the heads edited by hand at o_proj's input (float64)."""
    model = vlm.model
    mods = vlm.adapter.attention_modules()
    Hq = vlm.n_heads
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    values = {}

    def grab_v(layer):
        def hook(module, args, out):
            values[layer] = out.detach()  # [B, S, Hkv * D]: value vectors (no rotary embedding on values)
        return hook

    def edit(layer):
        def hook(module, args):
            x = args[0]
            B, S, _ = x.shape
            per = x.double().reshape(B, S, Hq, -1).clone()
            D = per.shape[-1]
            for h in by_layer[layer]:
                if how == "zero":
                    per[:, :, h] = 0
                elif how == "mean":
                    per[:, :, h] = per[:, :, h].cumsum(1) / torch.arange(1, S + 1, dtype=torch.float64)[None, :, None]
                else:
                    v = values[layer].double().reshape(B, S, -1, D)
                    kv = h // (Hq // v.shape[2])
                    for t in range(S):
                        pos = positions[positions <= t]
                        if len(pos):
                            per[:, t, h] = v[:, pos, kv].mean(1)
            return (per.reshape(B, S, -1).to(x.dtype),)
        return hook

    handles = []
    try:
        for l in by_layer:
            handles.append(mods[l].o_proj.register_forward_pre_hook(edit(l)))
            if how == "uniform":
                handles.append(mods[l].v_proj.register_forward_hook(grab_v(l)))
        before = text_attn(model)
        set_text_attn(model, "eager")
        try:
            return model(**inputs, use_cache=False).logits
        finally:
            set_text_attn(model, before)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("how", ["zero", "mean", "uniform"])
def test_ablate_equals_eager_reference_edit(case, how, impl):
    family, vlm, strip = case
    heads = heads_of(vlm)
    prep = vlm.prepare(strip, QUESTION)
    P = prep.prompt_len
    with torch.no_grad():
        plain = vlm.model(**prep).logits
    before = text_attn(vlm.model)
    set_text_attn(vlm.model, impl)
    try:
        with gazekit.ablate(vlm, heads, how=how) as spec:
            logits = vlm.forward(prep).logits
            gen = vlm.generate(prep, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, output_logits=True,
                               return_dict_in_generate=True)
        assert text_attn(vlm.model) == impl
    finally:
        set_text_attn(vlm.model, before)
    assert spec.how == how and len(spec.heads) == 3
    ref = reference_logits(vlm, prep, heads, how, prep.image_positions)
    d = (logits - ref).abs().max().item()
    assert d <= TOL, f"{family} {how} {impl}: prefill logits differ from the reference edit by {d:.2e}"
    # decode: each KV-cached step's logits equal the reference's whole-sequence forward at that position
    new = gen.sequences[:, P:]
    full = reference_logits(vlm, extend(prep, new[:, :-1]), heads, how, prep.image_positions)
    for i, step_logits in enumerate(gen.logits):
        d = (step_logits - full[:, P - 1 + i]).abs().max().item()
        assert d <= TOL, f"{family} {how} {impl}: decode step {i} differs from the reference by {d:.2e}"
    assert (ref - plain).abs().max().item() > 1e-3  # not vacuous: the ablation moved the logits


@pytest.mark.parametrize("region", [3, "box"])
def test_uniform_over_a_region_equals_reference(case, region):
    family, vlm, strip = case
    heads = heads_of(vlm)
    prep = vlm.prepare(strip, QUESTION)
    if region == "box":
        W, H = strip.image.size
        region = (0, 0, W // 2, H)
        positions = prep.positions_for_box(region)
    else:
        positions = prep.regions[region - 1]
    with gazekit.ablate(vlm, heads, how="uniform", region=region):
        logits = vlm.forward(prep).logits
        gen = vlm.generate(prep, max_new_tokens=2, min_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    ref = reference_logits(vlm, prep, heads, "uniform", positions)
    assert (logits - ref).abs().max().item() <= TOL
    full = reference_logits(vlm, extend(prep, gen.sequences[:, prep.prompt_len:-1]), heads, "uniform", positions)
    assert (gen.logits[1] - full[:, prep.prompt_len]).abs().max().item() <= TOL
    whole = reference_logits(vlm, prep, heads, "uniform", prep.image_positions)
    assert (ref - whole).abs().max().item() > 1e-4  # the region matters: not the whole image's uniform


def test_unselected_heads_untouched_and_batch_rows_independent(case):
    """Other heads' outputs are exactly as without ablation; in a batch, every row gets its own running mean."""
    family, vlm, strip = case
    mod = vlm.adapter.attention_modules()[0]
    seen = {}
    h = mod.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    try:
        prep = vlm.prepare(strip, QUESTION)
        with torch.no_grad():
            vlm.model(**prep)
        base = seen["x"]
        with gazekit.ablate(vlm, [(0, 1)], how="mean"):
            vlm.forward(prep)
        got = seen["x"]
    finally:
        h.remove()
    H = vlm.n_heads
    per, st = base.reshape(*base.shape[:2], H, -1), got.reshape(*got.shape[:2], H, -1)
    others = [i for i in range(H) if i != 1]
    assert torch.equal(st[:, :, others], per[:, :, others])
    assert (st[:, :, 1] - per[:, :, 1]).abs().max().item() > 1e-4
    other = tm.make_strip(seed=7)
    gen = dict(max_new_tokens=3, min_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    with gazekit.ablate(vlm, heads_of(vlm), how="mean"):
        batch = vlm.generate(vlm.prepare_batch([strip, other], [QUESTION] * 2), **gen)
        alone = [vlm.generate(vlm.prepare(s, QUESTION), **gen) for s in (strip, other)]
    for r in range(2):
        assert torch.equal(batch.sequences[r], alone[r].sequences[0])
        for a, b in zip(batch.logits, alone[r].logits):
            assert (a[r] - b[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("how", ["zero", "mean", "uniform"])
def test_discovery_under_ablation_equals_naive_in_every_mode(case, how):
    """Gaze scores measured with heads ablated: the shared-prefix modes give the naive path's matrices (the mean
    and the uniform edit follow each suffix's own mask), or refuse with a clear error (mean on copied caches)."""
    from gazekit.discover import strip_matrix, strip_matrix_fast

    family, vlm, strip = case
    questions = [panel_question(k) for k in range(1, 7)]
    plain = strip_matrix(vlm, strip, questions)
    with gazekit.ablate(vlm, [(0, 1), (0, 3)], how=how):
        want = strip_matrix(vlm, strip, questions)
        assert np.abs(gazekit.discover(vlm, [strip], progress=False).matrix - want).max() <= 1e-5
        with gazekit.steer(vlm, [(vlm.n_layers - 1, 0)], target=2):  # steered too: sequential, not batched
            both = strip_matrix(vlm, strip, questions)
            assert np.abs(gazekit.discover(vlm, [strip], progress=False).matrix - both).max() <= 1e-5
        for mode in ("single", "packed", "batched", "sequential"):
            if mode == "single" and not vlm.adapter.supports_packed_prompt:
                continue
            if mode == "batched" and how == "mean":
                with pytest.raises(RuntimeError, match="one sequence per batch row"):
                    strip_matrix_fast(vlm, strip, questions, mode=mode)
                continue
            got = strip_matrix_fast(vlm, strip, questions, mode=mode)
            assert np.abs(got - want).max() <= 1e-5, (family, how, mode)
    assert np.abs(want - plain)[1:].max() > 1e-4  # the ablation changed what later layers attend to


def test_exception_inside_ablate_restores_model(case):
    family, vlm, strip = case
    model = vlm.model
    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = model(**prep).logits
    snap = tm.model_snapshot(model)
    for how in ("zero", "mean", "uniform"):
        with pytest.raises(RuntimeError, match="boom"):
            with gazekit.ablate(vlm, heads_of(vlm), how=how):
                vlm.ask(strip, QUESTION, max_new_tokens=2)
                raise RuntimeError("boom")
        tm.assert_restored(model, snap)

    def explode(module, args, kwargs):
        raise RuntimeError("boom in forward")

    layer = vlm.adapter.attention_modules()[-1]
    with pytest.raises(RuntimeError, match="boom in forward"):
        with gazekit.ablate(vlm, heads_of(vlm), how="mean"), gazekit.steer(vlm, [(0, 0)], target=2):
            h = layer.register_forward_pre_hook(explode, with_kwargs=True)
            try:
                vlm.ask(strip, QUESTION, max_new_tokens=2)  # fails mid-forward, inside nested blocks
            finally:
                h.remove()
    tm.assert_restored(model, snap)
    assert vlm.interventions == ()
    with torch.no_grad():
        assert torch.equal(model(**vlm.prepare(strip, QUESTION)).logits, ref)


def test_null_ablation_is_identity(case):
    family, vlm, strip = case
    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = vlm.model(**prep).logits
    with pytest.warns(UserWarning, match="no heads"), gazekit.ablate(vlm, [], how="mean"):
        got = vlm.forward(prep).logits
    assert torch.equal(got, ref)


def test_bad_input_gets_one_clear_error(case):
    family, vlm, strip = case
    with pytest.raises(ValueError, match=r"how must be one of \('mean', 'zero', 'uniform'\)"):
        with gazekit.ablate(vlm, [(0, 0)], how="random"):
            pass
    with pytest.raises(ValueError, match=r"out of range.*layers 0\.\.\d+ and heads 0\.\.\d+"):
        with gazekit.ablate(vlm, [(0, vlm.n_heads)]):
            pass
    with pytest.raises(ValueError, match="region= only applies to how='uniform'.*drop region="):
        with gazekit.ablate(vlm, [(0, 0)], how="mean", region=2):
            pass
    with pytest.raises(ValueError, match="1-based"):
        with gazekit.ablate(vlm, [(0, 0)], how="uniform", region=0):
            pass
    with pytest.raises(ValueError, match="ablation region"):
        with gazekit.ablate(vlm, [(0, 0)], how="uniform", region={0: 1}):
            pass
    assert vlm.interventions == ()
