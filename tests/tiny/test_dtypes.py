"""Steering and capture in half precision (CPU bf16/fp16): the documented precision behaviour.

gazekit shifts each row's bias so boosted target keys get +0 (exact logits) and suppressed keys get large negative
values. So in bf16 a steered head keeps its *within-target* attention pattern (as in fp32), where adding +1e4 to bf16
logits (spacing 64 near 1e4) would flatten it to uniform over the target."""
import copy

import numpy as np
import pytest
import torch

import gazekit
from gazekit import testing as tm

QUESTION = "Describe the third panel."


def _steered_rows(vlm, strip, head, target):
    """The steered head's real last-row attention, as the stock eager function computed it (output_attentions)."""
    prep = vlm.prepare(strip, QUESTION)
    with gazekit.steer(vlm, [head], target=target), torch.no_grad():
        out = vlm.model(**prep, use_cache=False, output_attentions=True)
    return out.attentions[head[0]][0, head[1], -1].double(), prep.regions[target - 1]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_half_precision_keeps_within_target_pattern(family, dtype, impl):
    model, proc = tm.build(family)
    strip = tm.make_strip()
    eager32 = copy.deepcopy(model)
    eager32.set_attn_implementation({"text_config": "eager"})
    full = gazekit.load(eager32, proc)
    half_model = copy.deepcopy(model).to(dtype)
    half_model.set_attn_implementation({"text_config": "eager"})
    half = gazekit.load(half_model, proc)
    head = (full.n_layers - 1, 1)
    # eager adds the mask to half-precision logits: the case where +1e4 would erase the pattern
    rows32, pos = _steered_rows(full, strip, head, target=3)
    rows16, _ = _steered_rows(half, strip, head, target=3)
    p32 = rows32[pos] / rows32[pos].sum()
    p16 = rows16[pos] / rows16[pos].sum()
    assert rows16[pos].sum() >= 0.99  # the steered head looks at the target
    spread = (p32 - 1.0 / len(pos)).abs().max().item()
    err = (p16 - p32).abs().max().item()
    # flattening to uniform would make err == spread; bf16 rounding of the weights alone gives ~0.3 x spread here
    assert err < 0.5 * spread, f"within-target pattern lost in {dtype}: spread {spread:.3g}, error {err:.3g}"

    half.model.set_attn_implementation({"text_config": impl})
    full.model.set_attn_implementation({"text_config": impl})
    # null steering is the identity in half precision too
    prep = half.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = half.model(**prep).logits
        with pytest.warns(UserWarning, match="no heads"), gazekit.steer(half, [], target=1):
            null = half.model(**half.prepare(strip, QUESTION)).logits
    assert torch.equal(ref, null)
    # capture in half precision is close to fp32 (same model, rounded weights)
    a32 = gazekit.capture(full, strip, QUESTION)
    a16 = gazekit.capture(half, strip, QUESTION)
    assert np.abs(a32 - a16).max() < 5e-2
    with gazekit.steer(half, [head], target=5):
        out = half.ask(strip, QUESTION, max_new_tokens=3)
    assert isinstance(out, str)
