"""Every bad input of issue A gets one clear error that names the fix (tiny real models, CPU)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import gazekit
from gazekit import GazeScores, Scene
from gazekit import testing as tm


def test_box_outside_image_or_covering_no_token(qwen):
    strip = tm.make_strip()
    W, H = strip.image.size
    prep = qwen.prepare(strip, "Describe.")
    with pytest.raises(ValueError, match="outside the"):
        prep.positions_for_box((0, 0, W + 10, H))
    with gazekit.steer(qwen, [(0, 0)], target=(1, 1, 3, 3)):  # a 2-px box between token centres
        with pytest.raises(ValueError, match="covers no image-token centre.*make the box larger"):
            qwen.ask(strip, "Describe.", max_new_tokens=1)
    tiny_box_scene = Scene(strip.image, [(1, 1, 3, 3)])
    with pytest.raises(ValueError, match="covers no image-token centre"):
        qwen.prepare(tiny_box_scene, "Describe.")


def test_head_out_of_range_names_valid_range(qwen):
    strip = tm.make_strip()
    with pytest.raises(ValueError, match=r"out of range: this model has layers 0\.\.1 and heads 0\.\.3"):
        with gazekit.steer(qwen, [(5, 0)], target=1):
            pass
    with pytest.raises(ValueError, match="pair"):
        with gazekit.steer(qwen, [3], target=1):
            pass
    with pytest.raises(ValueError, match="1-based"):
        with gazekit.steer(qwen, [(0, 0)], target=0):
            pass
    with pytest.raises(ValueError, match="mode must be one of"):
        with gazekit.steer(qwen, [(0, 0)], target=1, mode="boost"):
            pass
    with pytest.raises(ValueError, match=r"region 7 out of range.*1\.\.6"):
        with gazekit.steer(qwen, [(0, 0)], target=7):
            qwen.ask(strip, "Describe.", max_new_tokens=1)
    assert qwen._session is None  # nothing left installed after the errors


def test_ranking_file_of_another_model(qwen, tmp_path):
    rows = [{"layer": l, "head": h, "score": float(l + h)} for l in range(3) for h in range(8)]
    p = tmp_path / "ranking.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="3 layers x 8 heads.*run gazekit.discover on this model"):
        GazeScores.load(p, vlm=qwen)


def test_unsupported_family_lists_supported():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(gazekit.UnsupportedModelError, match="no adapter for model_type 'llama'.*Supported families: "
                                                            ".*qwen2_vl.*adding-a-family"):
        gazekit.load(model, object())


def test_wide_strip_is_padded_not_cropped_on_llava(llava):
    """LLaVA's processor centre-crops; gazekit pads to a square so all six panels keep tokens."""
    strip = tm.make_strip()
    assert strip.image.width > 3 * strip.image.height
    prep = llava.prepare(strip, "Describe.")
    assert len(prep.regions) == 6 and all(len(r) > 0 for r in prep.regions)


def test_empty_strip_list_and_wrong_types(qwen):
    with pytest.raises(ValueError, match="at least one strip"):
        gazekit.discover(qwen, [])
    with pytest.raises(TypeError, match="Strip.from_panels"):
        gazekit.discover(qwen, [Image.new("RGB", (64, 64))])
    with pytest.raises(TypeError, match="Strip, Scene or PIL image"):
        qwen.prepare(np.zeros((4, 4, 3)), "Describe.")


def test_embedded_load_reports_missing_weights(tmp_path):
    from gazekit.organism import load_organism

    with pytest.raises(FileNotFoundError, match="python -m gazekit.organism.train"):
        load_organism(str(tmp_path))
    with pytest.raises(ValueError, match="quantize must be"):
        gazekit.load(quantize="8bit")
