"""Issue 26: no silent wrong result, no misleading error (tiny real models, CPU).

Each case of the issue has one test here; the last test is a property test over random heads, targets, boxes and
strengths: after any call, successful or not, the model is exactly as before and every error names a fix."""
import json
import warnings

import pytest
import torch

import gazekit
from gazekit import GazeScores
from gazekit import testing as tm

QUESTION = "Describe the third panel."


@pytest.fixture(scope="module")
def strip():
    return tm.make_strip()


# -- strength -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_strength_refused(qwen, bad):
    with pytest.raises(ValueError, match="strength must be finite.*1e4"):
        with gazekit.steer(qwen, [(0, 0)], target=1, strength=bad):
            pass
    assert qwen._session is None


def test_negative_strength_refused(qwen):
    with pytest.raises(ValueError, match="strength must be >= 0.*steer them toward another region"):
        with gazekit.steer(qwen, [(0, 0)], target=1, strength=-5.0):
            pass
    with pytest.raises(ValueError, match="larger than gazekit's float32 bias can hold: use at most 1e\\+30"):
        with gazekit.steer(qwen, [(0, 0)], target=1, strength=3e38):
            pass
    with pytest.raises(ValueError, match="strength must be a number"):
        with gazekit.steer(qwen, [(0, 0)], target=1, strength="big"):
            pass


# -- empty heads ----------------------------------------------------------------------------------------------------
def test_empty_heads_warn_and_change_nothing(qwen, strip):
    prep = qwen.prepare(strip, QUESTION)
    with torch.no_grad():
        ref = qwen.model(**prep).logits
    with pytest.warns(UserWarning, match=r"no heads, so nothing is steered.*scores\.top\(k\)"):
        with gazekit.steer(qwen, [], target=3):
            with torch.no_grad():
                got = qwen.model(**qwen.prepare(strip, QUESTION)).logits
    assert torch.equal(ref, got)


# -- nested steering ------------------------------------------------------------------------------------------------
def test_nested_steer_same_head_other_target_refused(qwen, strip):
    with gazekit.steer(qwen, [(1, 0), (1, 1)], target=2):
        with pytest.raises(ValueError, match=r"L1\.H1 are already steered toward 2.*cancel.*Close the outer steer"):
            with gazekit.steer(qwen, [(1, 1)], target=5):
                pass
        with gazekit.steer(qwen, [(1, 1)], target=2):  # same target: defined (biases add, same target)
            a = gazekit.capture(qwen, strip, QUESTION)
        with gazekit.steer(qwen, [(1, 2)], target=5):  # disjoint heads: nest freely
            b = gazekit.capture(qwen, strip, QUESTION)
    assert a[1, 1, 1] > 0.99 and b[1, 2, 4] > 0.99 and b[1, 1, 1] > 0.99
    assert qwen._session is None


def test_two_wrappers_of_one_model_share_one_session(strip):
    model, proc = tm.build("qwen2_vl")
    outer, inner = gazekit.load(model, proc), gazekit.load(model, proc)
    before = gazekit.capture(outer, strip, QUESTION)
    with gazekit.steer(outer, [(1, 0)], target=2):
        with gazekit.steer(inner, [(1, 3)], target=5):
            both = gazekit.capture(inner, strip, QUESTION)  # outer steering stays on inside the inner block
        after_inner = gazekit.capture(outer, strip, QUESTION)  # and the outer capture still records
        with pytest.raises(ValueError, match="already steered"):  # the conflict check sees both wrappers
            with gazekit.steer(inner, [(1, 0)], target=4):
                pass
    assert both[1, 0, 1] > 0.99 and both[1, 3, 4] > 0.99
    assert after_inner[1, 0, 1] > 0.99 and abs(after_inner[1, 3, 4] - before[1, 3, 4]) < 1e-5
    assert outer._session is None and inner._session is None
    assert model.config.get_text_config()._attn_implementation == "sdpa"


# -- load -----------------------------------------------------------------------------------------------------------
def test_load_with_tokenizer_refused_at_load():
    model, proc = tm.build("llava")
    with pytest.raises(ValueError, match="no image processor: pass the model's processor.*not its tokenizer"):
        gazekit.load(model, proc.tokenizer)


def test_load_keeps_train_mode_and_warns():
    model, proc = tm.build("qwen2_vl")
    model.train()
    with pytest.warns(UserWarning, match=r"training mode.*call model\.eval\(\)"):
        vlm = gazekit.load(model, proc)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gazekit.load(model, proc)
    assert not model.training and vlm.model is model


def test_embedded_model_is_where_the_tutorials_say():
    """The tutorials print "on cuda" when CUDA is available: the embedded model must be there too."""
    vlm = gazekit.load()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert vlm.device.type == expected
    assert f"device={vlm.device}" in repr(vlm)


# -- ranking files --------------------------------------------------------------------------------------------------
def test_bare_ranking_of_a_smaller_model_refused(qwen, tmp_path):
    rows = [{"layer": l, "head": h, "score": float(l + h)} for l in range(1) for h in range(4)]  # 1 x 4 of a 2 x 4
    p = tmp_path / "small.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"ranks 4 heads of a model with 1 layers x 4 heads, but .* has 2 layers x 4 heads.*run "
                                         "gazekit.discover on this model"):
        GazeScores.load(p, vlm=qwen)
    full = [{"layer": l, "head": h, "score": float(l + h)} for l in range(2) for h in range(4)]
    p.write_text(json.dumps(full))
    assert GazeScores.load(p, vlm=qwen).top(1) == [(1, 3)]
    p.write_text(json.dumps(full[1:]))  # right dimensions, one head missing
    with pytest.raises(ValueError, match="ranks 7 heads"):
        GazeScores.load(p, vlm=qwen)


# -- image processing -----------------------------------------------------------------------------------------------
def test_centre_cropping_processor_detected(strip):
    model, proc = tm.build("llava")
    ip = proc.image_processor
    edge = ip.size["shortest_edge"]
    ip.crop_size = {"height": edge - 8, "width": edge - 8}
    vlm = gazekit.load(model, proc)
    with pytest.raises(ValueError, match="cut off the image's borders.*do_center_crop = False"):
        vlm.prepare(strip, QUESTION)
    ip.do_center_crop = False  # the fix the message names
    with pytest.warns(UserWarning):  # the tiny LLaVA's panels get 2 tokens each (see below)
        vlm.prepare(strip, QUESTION)


def test_llava_hint_uses_the_padded_cell_size_and_few_tokens_warn(llava, strip):
    W, H = strip.image.size
    g = tm.LLAVA_IMAGE // tm.LLAVA_PATCH  # patch grid over the padded W x W square
    cell = W / g
    with pytest.warns(UserWarning, match=r"region '1' gets only 2 image token\(s\).*larger panels"):
        prep = llava.prepare(strip, QUESTION)
    with pytest.raises(ValueError, match=rf"covers no image-token centre.*cell of about {cell:.0f}x{cell:.0f} px"):
        prep.positions_for_box((1, 1, 3, 3))


# -- float64 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_float64_steering_matches_eager_oracle(family, strip):
    """The steered head's attention equals the reference edit done by hand on the unsteered float64 logits:
    softmax(logits + B on the target's image tokens - B on the other image tokens)."""
    model, proc = tm.build(family)
    model = model.double()
    model.set_attn_implementation({"text_config": "eager"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        vlm = gazekit.load(model, proc)
        prep = vlm.prepare(strip, QUESTION)
    assert prep["pixel_values"].dtype == torch.float64
    layer, head, target, B = vlm.n_layers - 1, 1, 3, 2.5  # last layer: its inputs are the same steered or not
    with torch.no_grad():
        p0 = model(**prep, use_cache=False, output_attentions=True).attentions[layer][0, head, -1]
        with gazekit.steer(vlm, [(layer, head)], target=target, strength=B):
            p1 = model(**prep, use_cache=False, output_attentions=True).attentions[layer][0, head, -1]
    bias = torch.zeros_like(p0)
    bias[prep.image_positions] = -B
    bias[prep.regions[target - 1]] = B
    oracle = torch.softmax(torch.log(p0) + bias, dim=-1)
    assert p1.dtype == torch.float64
    assert (p1 - p0).abs().max() > 1e-2  # the edit is visible ...
    # ... and exact up to the stock eager function's float32 softmax (llama/qwen2 eager softmax in float32)
    assert torch.allclose(p1, oracle, atol=1e-6, rtol=0), (p1 - oracle).abs().max()
    assert model.config.get_text_config()._attn_implementation == "eager"


def test_offline_qwen_processor_recipe_from_gotchas(tmp_path, strip):
    """docs/gotchas.md's recipe for a Qwen-VL processor without torchvision, run as written on a saved fixture."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "gotchas.md").read_text()
    code = re.search(r"## Building a Qwen-VL processor offline.*?```python\n(.*?)```", doc, re.S).group(1)
    folder = tm.save_fixture("qwen2_vl", tmp_path / "qwen")
    code = code.replace('"/models/Qwen2-VL-2B-Instruct"', repr(str(folder)))
    scope = {"gazekit": gazekit}
    exec(code, scope)
    vlm = scope["vlm"]
    assert vlm.family == "qwen2_vl" and hasattr(vlm.processor, "image_processor")
    assert len(vlm.prepare(strip, QUESTION).regions) == 6
