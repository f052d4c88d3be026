"""Property test (issue 26): random heads, targets, boxes, strengths and modes on a tiny Qwen2-VL. After any call,
successful or not, the model's weights, attention implementation, hooks and train/eval mode are exactly as before,
and every error names a fix. Few examples: seconds, for CI."""
import math
import re
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gazekit
from gazekit.steer import MODES, PHASES
from gazekit import testing as tm

_MODEL, _PROC = tm.build("qwen2_vl")
_VLM = gazekit.load(_MODEL, _PROC)
_STRIP = tm.make_strip()
W, H = _STRIP.image.size
# an error "names a fix" when it tells the user what to do instead
FIX = re.compile(r"\b(use|give|pass|make|call|run|set|close|steer them|choose|prepare)\b", re.I)


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "impl": [(id(c), c._attn_implementation) for c in (model.config, model.config.get_text_config())],
        "hooks": [(name, len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks))
                  for name, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
    }


def _assert_same(before, after):
    assert before["impl"] == after["impl"]
    assert before["hooks"] == after["hooks"]
    assert before["training"] == after["training"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


heads = st.one_of(st.just("all"), st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 5)), max_size=4))
boxes = st.tuples(*[st.floats(-20, W + 20, allow_nan=False)] * 2 + [st.floats(-20, W + 20, allow_nan=False)] * 2)
targets = st.one_of(st.integers(-1, 8), st.sampled_from(["1", "3", "nope"]), boxes,
                    st.dictionaries(st.integers(-1, 3), st.integers(1, 6), max_size=2))
strengths = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 1e4, -1.0]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=heads, target=targets, strength=strengths, mode=st.sampled_from(MODES),
       phase=st.sampled_from(PHASES), train=st.booleans(), action=st.sampled_from(["capture", "ask", "nested"]))
def test_model_restored_after_any_call_and_errors_name_a_fix(heads, target, strength, mode, phase, train, action):
    _MODEL.train(train)
    try:
        before = _snapshot(_MODEL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                with gazekit.steer(_VLM, heads, target=target, mode=mode, strength=strength, phase=phase):
                    if action == "capture":
                        a = gazekit.capture(_VLM, _STRIP, "Describe.")
                        assert math.isfinite(float(a.sum()))  # never a silent NaN
                    elif action == "ask":
                        _VLM.ask(_STRIP, "Describe.", max_new_tokens=2)
                    else:  # a nested steer toward panel 6 on head L0.H0
                        with gazekit.steer(_VLM, [(0, 0)], target=6, strength=1.0):
                            gazekit.capture(_VLM, _STRIP, "Describe.")
        except (ValueError, TypeError, RuntimeError) as e:
            assert FIX.search(str(e)), f"error without a fix: {e}"
        _assert_same(before, _snapshot(_MODEL))
        assert _VLM._session is None
    finally:
        _MODEL.eval()
