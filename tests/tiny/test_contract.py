"""The adapter contract, run on every registered family (tiny random-weight models of the real classes, on CPU).

For each family: capture equals an independent oracle (eager forward with output_attentions=True, last row summed
over prepare(...).regions); steering with no heads is the identity; unselected heads are untouched; steering under
sdpa (and eager) equals a reference-style eager mask edit computed independently in float64; a steered head puts
>= 0.99 of its image attention on the target; schedules and callables switch at the right decode step; a 4-bit load
captures and steers; the model is exactly restored after an exception; discovery's shared-prefix path equals the
naive one. The largest oracle difference per family is written to <pytest basetemp>/oracle_diffs.json (and to
$GAZEKIT_ORACLE_JSON when set) for the closing note.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import gazekit
from gazekit.models.adapters import supported_families
from gazekit.regions import panel_question
from gazekit import testing as tm
from gazekit.testing import set_text_attn, text_attn

torch.set_num_threads(1)

ORGANISM = "gazekit-organism"
# the Qwen-class organism with its TRAINED weights (gazekit.load("organism-qwen")): the contract on a model whose
# attention is not random, through the ordinary qwen2_vl adapter (the strip as one image, M-RoPE, KV discovery)
ORGANISM_QWEN = "organism-qwen"
# Gemma 3 again with a 48-key sliding window on layer 0: the last prompt token sees only the last image rows there,
# and the decode cache keeps fewer keys than the sequence (biases and captured rows must be right-aligned).
GEMMA3_SLIDING = "gemma3-sliding48"
CASES = list(tm.FAMILIES) + [GEMMA3_SLIDING, ORGANISM, ORGANISM_QWEN]
QUESTION = panel_question(3)
ORACLE_TOL = 1e-5
REF_TOL = 1e-5


# ------------------------------------------------------------------------------------------------ building
def build_case(family):
    if family == ORGANISM:
        # a freshly initialised organism (same classes and processor as the shipped one, random weights)
        from gazekit.organism.model import build_model
        from gazekit.organism.processor import ComicTileProcessor

        processor = ComicTileProcessor()
        return build_model(processor, seed=0).eval(), processor
    if family == ORGANISM_QWEN:
        from gazekit.organism.qwen import load_qwen_organism

        return load_qwen_organism()
    if family == GEMMA3_SLIDING:
        return tm.build("gemma3", sliding_window=48)
    return tm.build(family)


def organism_strip():
    # the organism's tiles are 32 px: a 32 px high strip keeps it fast
    return tm.make_strip(height=32)


def strip_for(family):
    """The strip a case is checked on: the Qwen organism gets a held-out strip of the data it was trained on."""
    if family == ORGANISM:
        return organism_strip()
    if family == ORGANISM_QWEN:
        from gazekit.comics import synthetic

        return synthetic(1, seed=2000)[0]
    return tm.make_strip()


def other_strip_for(family):
    """A second strip with the same token layout as `strip_for(family)` (batches need one length)."""
    if family == ORGANISM_QWEN:
        from gazekit.comics import synthetic

        return synthetic(1, seed=2001)[0]
    return tm.make_strip(height=strip_for(family).image.size[1], seed=7)


def assert_real_signal(family, panel_mass):
    """The oracle comparison is not between near-zero numbers. Random weights spread attention, so every head puts
    some mass on the image; the trained Qwen organism has heads that ignore the image (2e-9) and gaze heads that put
    nearly all of it on one panel."""
    per_head = panel_mass.sum(-1)
    if family == ORGANISM_QWEN:
        assert per_head.max() > 0.5 and (per_head > 0.01).mean() > 0.25
    else:
        assert per_head.min() > 0.01


def logit_tol(reference_logits) -> float:
    """REF_TOL, relative to the logits' scale when they exceed 1: sdpa and the eager mask edit round differently in
    float32, by about machine epsilon times the values' size. Random-weight models have logits below 1 (REF_TOL
    itself); the trained Qwen organism's reach 16 (1e-5 is ~10 float32 ulps there)."""
    return REF_TOL * max(1.0, float(reference_logits.abs().max()))


@pytest.fixture(scope="module", params=CASES)
def case(request):
    family = request.param
    model, processor = build_case(family)
    vlm = gazekit.load(model, processor)
    return family, vlm, strip_for(family)


@pytest.fixture(scope="session")
def oracle_log(tmp_path_factory):
    log: dict[str, float] = {}
    yield log
    if log:
        text = json.dumps({k: log[k] for k in sorted(log)}, indent=1)
        (tmp_path_factory.getbasetemp() / "oracle_diffs.json").write_text(text)
        if os.environ.get("GAZEKIT_ORACLE_JSON"):
            with open(os.environ["GAZEKIT_ORACLE_JSON"], "w") as f:
                f.write(text)
        print("\nlargest |capture - output_attentions oracle| per family:", text)


def _note(log, key, value):
    log[key] = max(float(value), log.get(key, 0.0))


# ------------------------------------------------------------------------------------------------ oracles
@torch.no_grad()
def oracle_capture(vlm, prep) -> np.ndarray:
    """[L, H, R] from the stock eager attention with output_attentions=True (no gazekit code involved)."""
    model = vlm.model
    before = text_attn(model)
    set_text_attn(model, "eager")
    try:
        out = model(**prep, output_attentions=True, use_cache=False)
    finally:
        set_text_attn(model, before)
    att = out.attentions
    assert len(att) == vlm.n_layers
    rows = [a[0, :, -1, :].double() for a in att]  # [H, S] per layer
    return np.stack([np.stack([r[:, pos].sum(-1).numpy() for pos in prep.regions], -1) for r in rows])


def _ref64_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain eager attention in float64 (a reference independent of transformers' and gazekit's functions)."""
    assert getattr(getattr(module, "config", None), "attn_logit_softcapping", None) is None
    rep = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(rep, dim=1)
    v = value.double().repeat_interleave(rep, dim=1)
    w = torch.matmul(query.double(), k.transpose(-1, -2)) * (scaling if scaling is not None else module.scaling)
    if attention_mask is not None:
        w = w + attention_mask[..., : k.shape[-2]].double()
    p = torch.softmax(w, dim=-1)
    out = torch.matmul(p, v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), p.to(query.dtype)


def _register_ref64():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("gazekit_test_ref64", _ref64_attention)
    AttentionMaskInterface.register("gazekit_test_ref64", eager_mask)


def key_bias(prep, n_keys, target, mode, strength, image_token_id):
    """The reference's per-key bias over `n_keys` positions (prompt, then generated tokens)."""
    ids = prep["input_ids"][0]
    P = ids.shape[0]
    img = torch.nonzero(ids == image_token_id).flatten()
    tgt = prep.regions[target - 1]
    kb = torch.zeros(n_keys, dtype=torch.float64)
    B = strength
    if mode == "boost_suppress":
        kb[img] = -B
        kb[tgt] = B
    elif mode == "suppress_image":
        kb[img] = -B
        kb[tgt] = 0
    elif mode == "suppress_all":
        kb[:P] = -B
        kb[tgt] = 0
    elif mode == "max_suppress_all":
        kb[:] = -B
        kb[tgt] = 0
    return kb


@torch.no_grad()
def reference_steer(vlm, prep, heads, target, mode, strength=1e4, new_tokens=3):
    """Reference-style steering: eager attention (float64) with a forward pre-hook on each selected layer's attention
    module that adds the bias to its `attention_mask` kwarg. Returns (prefill logits, generate output)."""
    _register_ref64()
    model = vlm.model
    mods = vlm.adapter.attention_modules()
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    total = {"T": 0}
    img_id = vlm.adapter.image_token_id

    def count(module, args, kwargs):  # total sequence length after this forward (prefill, then +1 per step)
        ids = kwargs.get("input_ids", args[0] if args else None)
        total["T"] = ids.shape[1] if total["T"] == 0 or ids.shape[1] > 1 else total["T"] + 1

    def make_hook(layer):
        def hook(module, args, kwargs):
            assert "attention_mask" in kwargs, "the reference needs the mask as a keyword argument"
            hs = kwargs.get("hidden_states", args[0] if args else None)
            Bsz, Q = hs.shape[0], hs.shape[1]
            T = total["T"]
            mask = kwargs["attention_mask"]
            if mask is None:
                keep = torch.ones(Q, T, dtype=torch.bool).tril(T - Q)
                mask = torch.zeros(Q, T, dtype=torch.float64).masked_fill(~keep, float("-inf"))[None, None]
            K = mask.shape[-1]
            kb = key_bias(prep, T, target, mode, strength, img_id)[T - K:]  # right-aligned keys
            bias = torch.zeros(Bsz, vlm.n_heads, Q, K, dtype=torch.float64)
            bias[:, by_layer[layer]] = kb
            kwargs["attention_mask"] = mask.double() + bias
            return args, kwargs
        return hook

    before = text_attn(model)
    handles = [model.register_forward_pre_hook(count, with_kwargs=True)]
    handles += [mods[l].register_forward_pre_hook(make_hook(l), with_kwargs=True) for l in by_layer]
    set_text_attn(model, "gazekit_test_ref64")
    try:
        total["T"] = 0
        logits = model(**prep, use_cache=False).logits
        total["T"] = 0
        gen = model.generate(**prep, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    finally:
        for h in handles:
            h.remove()
        set_text_attn(model, before)
    return logits, gen


# ------------------------------------------------------------------------------------------------ contract
def test_every_registered_family_has_a_case():
    assert set(supported_families()) <= set(CASES), (
        f"families without a contract case: {sorted(set(supported_families()) - set(CASES))}; add a fixture in "
        "gazekit/testing.py")


def test_regions_are_panels_left_to_right(case):
    family, vlm, strip = case
    prep = vlm.prepare(strip, QUESTION)
    assert len(prep.regions) == 6
    img = set(prep.image_positions.tolist())
    seen: set = set()
    xs = []
    for pos in prep.regions:
        p = set(pos.tolist())
        assert p and p <= img and not (p & seen)  # non-empty, image tokens only, disjoint
        seen |= p
        idx = [i for i, q in enumerate(prep.cells.positions.tolist()) if q in p]
        xs.append(float(np.mean(prep.cells.centres[idx, 0])))
    assert xs == sorted(xs), f"{family}: region centres not left to right: {xs}"


def test_capture_equals_output_attentions_oracle(case, oracle_log):
    family, vlm, strip = case
    for k in (1, 6):
        q = panel_question(k)
        got = gazekit.capture(vlm, strip, q)
        want = oracle_capture(vlm, vlm.prepare(strip, q))
        assert got.shape == (vlm.n_layers, vlm.n_heads, 6)
        diff = np.abs(got - want).max()
        _note(oracle_log, family, diff)
        assert diff < ORACLE_TOL, f"{family}: capture differs from the oracle by {diff:.2e}"
        assert_real_signal(family, want)


def test_null_steering_is_identity(case):
    family, vlm, strip = case
    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = vlm.model(**prep).logits
        ref_gen = vlm.generate(prep, max_new_tokens=4, min_new_tokens=4)
    with pytest.warns(UserWarning, match="no heads"), gazekit.steer(vlm, [], target=2):
        prep = vlm.prepare(strip, QUESTION)
        with torch.no_grad():
            got = vlm.model(**prep).logits
        got_gen = vlm.generate(prep, max_new_tokens=4, min_new_tokens=4)
    assert (got - ref).abs().max().item() <= 1e-6
    assert torch.equal(got_gen, ref_gen)
    with gazekit.steer(vlm, [(0, 0)], target=2, strength=0.0):
        with torch.no_grad():
            zero = vlm.model(**vlm.prepare(strip, QUESTION)).logits
    assert (zero - ref).abs().max().item() <= 1e-5


def test_unselected_heads_untouched(case):
    family, vlm, strip = case
    mod = vlm.adapter.attention_modules()[0]
    seen = {}

    def grab(module, args):
        seen["x"] = args[0].detach().clone()  # o_proj input: [B, S, heads * head_dim], head-major

    h = mod.o_proj.register_forward_pre_hook(grab)
    try:
        prep = vlm.prepare(strip, QUESTION)
        with torch.no_grad():
            vlm.model(**prep)
        base = seen["x"]
        base_cap = gazekit.capture(vlm, strip, QUESTION)
        with gazekit.steer(vlm, [(0, 1)], target=4):
            with torch.no_grad():
                vlm.model(**vlm.prepare(strip, QUESTION))
            steered = seen["x"]
            cap = gazekit.capture(vlm, strip, QUESTION)
    finally:
        h.remove()
    H = vlm.n_heads
    per = base.reshape(*base.shape[:2], H, -1)
    st = steered.reshape(*steered.shape[:2], H, -1)
    others = [i for i in range(H) if i != 1]
    assert (st[:, :, others] - per[:, :, others]).abs().max().item() <= 1e-6
    assert (st[:, :, 1] - per[:, :, 1]).abs().max().item() > 1e-3  # the steered head did change
    assert np.abs(cap[0, others] - base_cap[0, others]).max() <= 1e-7
    assert cap[0, 1, 3] / cap[0, 1].sum() >= 0.99


@pytest.mark.parametrize("mode", ["boost_suppress", "suppress_image", "suppress_all", "max_suppress_all"])
def test_sdpa_steering_equals_eager_mask_edit(case, mode, oracle_log):
    family, vlm, strip = case
    heads, target = [(0, 1), (vlm.n_layers - 1, 2)], 5
    prep = vlm.prepare(strip, QUESTION)
    ref_logits, ref_gen = reference_steer(vlm, prep, heads, target, mode)
    with torch.no_grad():
        plain = vlm.model(**prep).logits
    for impl in ("sdpa", "eager"):
        before = text_attn(vlm.model)
        set_text_attn(vlm.model, impl)
        try:
            with gazekit.steer(vlm, heads, target=target, mode=mode):
                prep = vlm.prepare(strip, QUESTION)
                with torch.no_grad():
                    logits = vlm.model(**prep).logits
                gen = vlm.generate(prep, max_new_tokens=3, min_new_tokens=3, output_logits=True,
                                   return_dict_in_generate=True)
            assert text_attn(vlm.model) == impl
        finally:
            set_text_attn(vlm.model, before)
        d = (logits - ref_logits).abs().max().item()
        _note(oracle_log, f"{family}/steer_vs_eager_mask_edit", d)
        tol = logit_tol(ref_logits)  # also for sliding-window layers: the row shift only uses keys the mask shows
        assert d <= tol, f"{family} {mode} {impl}: prefill logits differ from the mask-edit reference by {d:.2e}"
        assert torch.equal(gen.sequences, ref_gen.sequences)
        for a, b in zip(gen.logits, ref_gen.logits):
            assert (a - b).abs().max().item() <= tol
    # the comparison is not vacuous: steering moved the logits
    assert (ref_logits - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("phase", ["all", "decode"])
def test_row_targets_equal_one_steer_per_row(case, phase):
    """One batch whose rows are steered toward different targets (`RowTargets`, what the evaluation protocols
    batch) gives every row the logits and tokens of that row steered alone."""
    from gazekit.steer import RowTargets

    family, vlm, strip = case
    other = other_strip_for(family)
    items, targets = [strip, strip, other, other], [2, 5, 2, 6]
    heads = [(0, 1), (vlm.n_layers - 1, 2), (vlm.n_layers - 1, 0)]
    gen = dict(max_new_tokens=3, min_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    with gazekit.steer(vlm, heads, RowTargets(targets), phase=phase):
        batch = vlm.generate(vlm.prepare_batch(items, [QUESTION] * 4), **gen)
    for r, (item, target) in enumerate(zip(items, targets)):
        with gazekit.steer(vlm, heads, target, phase=phase):
            alone = vlm.generate(vlm.prepare(item, QUESTION), **gen)
        assert torch.equal(batch.sequences[r], alone.sequences[0]), (family, r)
        for a, b in zip(batch.logits, alone.logits):
            assert (a[r] - b[0]).abs().max().item() <= 1e-4, (family, r)
    # not vacuous: the same strip steered to 2 and to 5 gives different logits
    assert (batch.logits[-1][0] - batch.logits[-1][1]).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="one target per row"):
        with gazekit.steer(vlm, heads, RowTargets([1, 2])):
            vlm.generate(vlm.prepare_batch(items, [QUESTION] * 4), max_new_tokens=1)


def test_steered_head_looks_at_target(case):
    family, vlm, strip = case
    heads = [(0, 2), (vlm.n_layers - 1, 0)]
    for target in range(1, 7):
        with gazekit.steer(vlm, heads, target=target):
            cap = gazekit.capture(vlm, strip, QUESTION)
        for l, h in heads:
            frac = cap[l, h, target - 1] / cap[l, h].sum()
            assert frac >= 0.99, f"{family}: head L{l}.H{h} puts {frac:.4f} of its image attention on {target}"


def test_schedule_and_callable_switch_on_time(case):
    family, vlm, strip = case
    head = [(vlm.n_layers - 1, 1)]
    schedules = {"dict": {0: 2, 2: 5}, "callable": lambda step, text: 2 if step < 2 else 5}
    for name, target in schedules.items():
        with gazekit.steer(vlm, head, target=target):
            traj = gazekit.track(vlm, strip, QUESTION, head, max_new_tokens=4, min_new_tokens=4)
        att = traj.attention[:, 0]  # [T, R]
        assert att.shape == (4, 6), name
        frac = att / att.sum(-1, keepdims=True)
        assert (frac[:2, 1] >= 0.99).all() and (frac[2:, 4] >= 0.99).all(), f"{family} {name}: {frac.round(3)}"
    with gazekit.steer(vlm, head, target=3, phase="decode"):
        traj = gazekit.track(vlm, strip, QUESTION, head, max_new_tokens=2, min_new_tokens=2)
    plain = gazekit.track(vlm, strip, QUESTION, head, max_new_tokens=2, min_new_tokens=2)
    # decode-only: the first generated token comes from an unsteered prefill
    assert np.abs(traj.attention[0] - plain.attention[0]).max() <= 1e-7
    assert traj.attention[1, 0, 2] / traj.attention[1, 0].sum() >= 0.99


def test_exception_inside_steer_and_capture_restores_model(case):
    from gazekit import attention

    family, vlm, strip = case
    model = vlm.model
    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = model(**prep).logits
    snap = tm.model_snapshot(model)

    with pytest.raises(RuntimeError, match="boom"):
        with gazekit.steer(vlm, [(0, 0), (1, 3)], target=2):
            vlm.ask(strip, QUESTION, max_new_tokens=2)
            raise RuntimeError("boom")
    tm.assert_restored(model, snap)

    def explode(module, args, kwargs):
        raise RuntimeError("boom in forward")

    layer = vlm.adapter.attention_modules()[-1]
    with pytest.raises(RuntimeError, match="boom in forward"):
        with gazekit.steer(vlm, [(0, 0)], target=4):
            h = layer.register_forward_pre_hook(explode, with_kwargs=True)
            try:
                gazekit.capture(vlm, strip, QUESTION)  # nested: capture inside steer, failing mid-forward
            finally:
                h.remove()
    tm.assert_restored(model, snap)
    assert not any(s.vlm is vlm for s in attention._SESSIONS.values())
    assert vlm._session is None
    with torch.no_grad():
        assert torch.equal(model(**vlm.prepare(strip, QUESTION)).logits, ref)


def test_discover_fast_path_equals_naive(case):
    family, vlm, strip = case
    fast = gazekit.discover(vlm, [strip], progress=False, fast=True)
    naive = gazekit.discover(vlm, [strip], progress=False, fast=False)
    assert fast.matrix.shape == (vlm.n_layers, vlm.n_heads, 6, 6)
    assert np.abs(fast.matrix - naive.matrix).max() <= 1e-5


@pytest.mark.parametrize("mode", ["single", "packed", "batched", "sequential"])
def test_every_discovery_mode_equals_naive(case, mode):
    """Each way of running the six suffixes gives the naive path's matrix, or refuses with a clear error where the
    model cannot use it (single: M-RoPE / bidirectional image block; packed, sequential: a short sliding window)."""
    from gazekit.discover import strip_matrix, strip_matrix_fast

    family, vlm, strip = case
    questions = [panel_question(k) for k in range(1, 7)]
    allowed = {"single": vlm.adapter.supports_packed_prompt and family != GEMMA3_SLIDING,
               "packed": family != GEMMA3_SLIDING, "sequential": family != GEMMA3_SLIDING, "batched": True}[mode]
    if not allowed:
        with pytest.raises(ValueError, match="mode="):
            strip_matrix_fast(vlm, strip, questions, mode=mode)
        return
    got = strip_matrix_fast(vlm, strip, questions, mode=mode)
    want = strip_matrix(vlm, strip, questions)
    assert np.abs(got - want).max() <= 1e-5
    assert_real_signal(family, want)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", ORGANISM])
def test_discover_batches_strips_of_one_layout_and_equals_naive(family):
    """Several strips per forward (same layout), strips of different layouts (one at a time after the first
    mismatch), and one strip per forward all give the naive path's mean matrix."""
    model, processor = build_case(family)
    vlm = gazekit.load(model, processor)
    h = 32 if family == ORGANISM else 64
    same = [tm.make_strip(height=h, seed=s) for s in range(3)]
    mixed = same[:1] + [tm.make_strip(height=h, widths=(96, 64, 64, 96, 64, 64), seed=5)] + same[1:]
    for strips in (same, mixed):
        naive = gazekit.discover(vlm, strips, progress=False, fast=False).matrix
        for batch_tokens in (4096, 0):
            got = gazekit.discover(vlm, strips, progress=False, batch_tokens=batch_tokens).matrix
            assert np.abs(got - naive).max() <= 1e-5, (family, len(strips), batch_tokens)
    with pytest.raises(ValueError, match="batch_tokens"):
        gazekit.discover(vlm, same, progress=False, batch_tokens=-1)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", GEMMA3_SLIDING])
@pytest.mark.parametrize("mode", ["single", "packed", "batched", "sequential"])
def test_every_mode_on_a_batch_of_strips_equals_naive(family, mode):
    """Two strips of one layout in one batch: each strip's matrix equals its own naive path, in every mode the
    model allows (rows of the batch must not be mixed up between strips or questions)."""
    from gazekit.discover import strip_matrix, strips_matrix_fast

    model, processor = build_case(family)
    vlm = gazekit.load(model, processor)
    strips = [tm.make_strip(seed=s) for s in (0, 1)]
    questions = [panel_question(k) for k in range(1, 7)]
    sliding = family == GEMMA3_SLIDING
    if (mode == "single" and not vlm.adapter.supports_packed_prompt) or (sliding and mode != "batched"):
        with pytest.raises(ValueError, match="mode="):
            strips_matrix_fast(vlm, strips, questions, mode=mode)
        return
    got = strips_matrix_fast(vlm, strips, questions, mode=mode)
    assert got.shape == (2, vlm.n_layers, vlm.n_heads, 6, 6)
    want = [strip_matrix(vlm, strip, questions) for strip in strips]
    for b in range(2):
        assert np.abs(got[b] - want[b]).max() <= 1e-5, (family, mode, b)
    assert np.abs(want[0] - want[1]).max() > 1e-4  # the strips differ, so swapped rows would be caught


def test_question_ids_without_the_image_processor_match_the_processor(case):
    """Discovery prepares the image once and derives the other five questions' ids from the tokenizer alone; they
    must be exactly what the processor gives (and be derived, not fall back, for every family we ship)."""
    family, vlm, strip = case
    questions = [panel_question(k) for k in range(1, 7)]
    first = vlm.prepare(strip, questions[0])
    derived = vlm.adapter.question_inputs(first, questions[1:])
    assert all(d is not None for d in derived), f"{family}: fell back to the processor"
    for q, d in zip(questions[1:], derived):
        want = vlm.prepare(strip, q)
        for k, v in d.items():
            assert torch.equal(v, want[k]), f"{family}: {k} differs for {q!r}"
    # the splice is checked: ids that do not end with the recorded prompt's tokens are refused, not spliced
    first.prompts = [questions[2]]
    try:
        assert vlm.adapter.question_inputs(first, [questions[1]]) == [None]
    finally:
        first.prompts = [questions[0]]


@pytest.mark.parametrize("family", CASES)
def test_4bit_load_captures_and_steers(family, tmp_path, oracle_log):
    import bitsandbytes as bnb

    path = tmp_path / family
    if family == ORGANISM:
        from gazekit.organism import load_organism

        model, processor = build_case(family)
        model.save_pretrained(path)  # before any forward: CPU 4-bit results change if the model ran first
        processor.save_pretrained(str(path))
        vlm = gazekit.load(*load_organism(str(path), quantize="4bit"))
        strip = organism_strip()
    elif family == ORGANISM_QWEN:
        from gazekit.organism.qwen import QWEN_WEIGHTS_DIR, load_qwen_organism

        vlm = gazekit.load(*load_qwen_organism(QWEN_WEIGHTS_DIR, quantize="4bit"))
        strip = strip_for(family)
    else:
        fam, kw = ("gemma3", {"sliding_window": 48}) if family == GEMMA3_SLIDING else (family, {})
        tm.save_fixture(fam, path, **kw)
        vlm = gazekit.load(str(path), tm.load_processor(fam, path), quantize="4bit")
        strip = tm.make_strip()
    assert vlm.family == ("qwen2_vl" if family == ORGANISM_QWEN else family.split("-sliding")[0])
    linears = [m for m in vlm.adapter.language_model().modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    # the adapter's full-precision modules (vision tower, projector, lm_head) are left as they were
    modules = dict(vlm.model.named_modules())
    kept = [m for name in vlm.adapter.full_precision_modules for m in modules[name].modules()
            if isinstance(m, torch.nn.Linear)]
    assert kept and not any(isinstance(m, bnb.nn.Linear4bit) for m in kept)

    want = oracle_capture(vlm, vlm.prepare(strip, QUESTION))
    # Like for like: bitsandbytes' CPU 4-bit kernel turns the tiny eager-vs-sdpa differences of the stock model into
    # ~1e-3 logit differences (measured on the organism: 1.6e-3 in 4-bit vs 3.6e-7 in fp32), so the oracle
    # comparison runs gazekit on the same (eager) attention implementation as the oracle.
    set_text_attn(vlm.model, "eager")
    try:
        got = gazekit.capture(vlm, strip, QUESTION)
    finally:
        set_text_attn(vlm.model, "sdpa")
    diff = np.abs(got - want).max()
    _note(oracle_log, f"{family}/4bit", diff)
    assert diff < ORACLE_TOL, f"{family} 4-bit: capture differs from the oracle by {diff:.2e}"
    got_sdpa = gazekit.capture(vlm, strip, QUESTION)
    assert np.abs(got_sdpa - want).max() < 1e-3  # sdpa: within the stock model's own 4-bit eager/sdpa drift

    prep = vlm.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = vlm.model(**prep).logits
    with pytest.warns(UserWarning, match="no heads"), gazekit.steer(vlm, [], target=1):
        with torch.no_grad():
            null = vlm.model(**vlm.prepare(strip, QUESTION)).logits
    assert (null - ref).abs().max().item() <= 1e-6
    head = (vlm.n_layers - 1, 1)
    with gazekit.steer(vlm, [head], target=6):
        cap = gazekit.capture(vlm, strip, QUESTION)
        answer = vlm.ask(strip, QUESTION, max_new_tokens=3)
    assert cap[head[0], head[1], 5] / cap[head[0], head[1]].sum() >= 0.99
    assert isinstance(answer, str)
    assert text_attn(vlm.model) == "sdpa"


def _token_pixel_blocks(family, vlm, inputs) -> torch.Tensor:
    """[n_image_tokens, pixels] — the processed pixels each image token is computed from, in token order, derived
    from pixel_values with the family's documented layout (independent of the adapters' centre arithmetic)."""
    pv = inputs["pixel_values"].float()
    cfg = vlm.model.config
    if family.startswith("qwen"):
        m = cfg.vision_config.spatial_merge_size
        return pv.reshape(pv.shape[0] // m**2, -1)  # the processor emits each merged token's m*m patches together

    def blocks(img, b):  # img [C, S, S'] -> row-major b x b blocks
        C, H, W = img.shape
        return img.reshape(C, H // b, b, W // b, b).permute(1, 3, 0, 2, 4).reshape((H // b) * (W // b), -1)

    if family == "llava":
        return blocks(pv[0], cfg.vision_config.patch_size)
    if family in ("idefics3", "smolvlm"):
        b = cfg.vision_config.patch_size * cfg.scale_factor
        return torch.cat([blocks(t, b) for t in pv[0]])  # tiles in order, then the global thumbnail
    if family == "gemma3":
        g = int(cfg.mm_tokens_per_image ** 0.5)
        return blocks(pv[0], pv.shape[-1] // g)
    raise AssertionError(family)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_regions_follow_the_pixels(family):
    """Repaint one panel: the image tokens whose input pixels change must include all of that panel's region and
    lie within it or its neighbours (resampling bleeds across a gap)."""
    from gazekit.regions import Strip
    from PIL import Image

    vlm = gazekit.load(*tm.build(family))
    strip = tm.make_strip()
    base = vlm.prepare(strip, QUESTION)
    before = _token_pixel_blocks(family, vlm, base)
    assert before.shape[0] == base.image_positions.numel()
    covered = torch.cat(base.regions)
    if family == "llava":  # tokens over the square's padding belong to no region
        assert covered.numel() < base.image_positions.numel()
    else:
        assert sorted(covered.tolist()) == base.image_positions.tolist()
    order = {p: i for i, p in enumerate(base.image_positions.tolist())}
    region_of = {p: r for r, pos in enumerate(base.regions) for p in pos.tolist()}
    g = torch.Generator().manual_seed(1)
    for k in range(6):
        img = strip.image.copy()
        x0, y0, x1, y1 = (int(v) for v in strip.panel_boxes[k])
        noise = (torch.rand(y1 - y0, x1 - x0, 3, generator=g) * 255).to(torch.uint8).numpy()
        img.paste(Image.fromarray(noise), (x0, y0))
        after = _token_pixel_blocks(family, vlm, vlm.prepare(Strip(img, strip.panel_boxes), QUESTION))
        changed = {p for p, i in order.items() if (after[i] - before[i]).abs().max() > 1e-3}
        assert set(base.regions[k].tolist()) <= changed, f"{family}: panel {k + 1} tokens whose pixels did not change"
        stray = {p for p in changed if p in region_of and abs(region_of[p] - k) > 1}
        assert not stray, f"{family}: repainting panel {k + 1} changed tokens of regions {sorted(region_of[p] + 1 for p in stray)}"


def test_gemma3_sliding_case_really_slides():
    """The sliding-window case above is only meaningful if layer 0 does cut keys: check it does."""
    vlm = gazekit.load(*build_case(GEMMA3_SLIDING))
    prep = vlm.prepare(tm.make_strip(), QUESTION)
    S = prep.prompt_len
    assert S > 48 + 20
    oracle = oracle_capture(vlm, prep)
    before = text_attn(vlm.model)
    set_text_attn(vlm.model, "eager")
    try:
        with torch.no_grad():
            att = vlm.model(**prep, output_attentions=True).attentions
    finally:
        set_text_attn(vlm.model, before)
    assert att[0][0, :, -1, : S - 48].abs().max().item() == 0  # sliding layer: old keys are out of the window
    assert att[1][0, :, -1, : S - 48].sum(-1).min().item() > 0.01  # full layer sees them
    assert oracle[0].sum(-1).max() < oracle[1].sum(-1).min()  # so layer 0 sees less of the image


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_load_from_folder(family, tmp_path):
    """gazekit.load(path): works where AutoProcessor rebuilds the processor offline; elsewhere (processors that want
    a torchvision video processor) a clear error names the fix, and passing the processor works."""
    path = tm.save_fixture(family, tmp_path / family)
    strip = tm.make_strip()
    model, processor = tm.build(family)
    want = gazekit.capture(gazekit.load(model, processor), strip, QUESTION)
    if family in ("llava", "idefics3", "gemma3"):
        vlm = gazekit.load(str(path))
    else:
        with pytest.raises(ValueError, match=r"gazekit.load\(path, processor\)"):
            gazekit.load(str(path))
        vlm = gazekit.load(str(path), tm.load_processor(family, path))
    assert vlm.family == family
    assert np.abs(gazekit.capture(vlm, strip, QUESTION) - want).max() <= 1e-7
