"""The Qwen-class organism (`gazekit.load("organism-qwen")`): loading by name, its processor against the real Qwen
image processor, the training recipe's pixels against the processor's, a smoke-trained recipe, and a held-out
steering check on its test seeds. The adapter contract on its trained weights is in tests/tiny/test_contract.py
(case "organism-qwen")."""
import json
import os

import numpy as np
import pytest
import torch

import gazekit
from gazekit.comics import synthetic
from gazekit.comics.synthetic import sample_strip_attrs
from gazekit.organism import qwen


@pytest.fixture(scope="module")
def vlm():
    return gazekit.load("organism-qwen")


def test_loads_by_name_as_an_ordinary_qwen2_vl(vlm):
    from transformers import Qwen2VLForConditionalGeneration
    assert isinstance(vlm.model, Qwen2VLForConditionalGeneration)
    assert vlm.family == "qwen2_vl"  # gazekit's own Qwen2-VL adapter: nothing organism-specific after the processor
    assert vlm.name == "gazekit/comic-organism-qwen"
    assert vlm.recommended_k is not None and vlm.recommended_k <= 0.15 * vlm.n_layers * vlm.n_heads
    assert "organism-qwen" in gazekit.models.model_names() and "organism" in gazekit.models.model_names()
    assert gazekit.load("organism").family == "gazekit-organism"
    with pytest.raises(ValueError, match="quantize= and dtype="):
        gazekit.load("organism-qwen", processor=vlm.processor)


def test_weights_are_small_and_in_the_package():
    size = os.path.getsize(os.path.join(qwen.QWEN_WEIGHTS_DIR, "model.safetensors"))
    assert size <= 15 * 2 ** 20
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml")) as f:
        assert "organism/weights_qwen/*" in f.read()


def test_strip_is_one_image_of_24_tokens_each_panel_inside_its_box(vlm):
    strip = synthetic(1, seed=2000)[0]
    prep = vlm.prepare(strip, gazekit.VQA_QUESTION)
    assert prep["image_grid_thw"].tolist() == [[1, 4, 24]]  # ONE image: 2 x 12 merged tokens
    assert prep["pixel_values"].shape == (96, 3 * 2 * 14 * 14)
    assert [len(r) for r in prep.regions] == [4] * 6
    for pos, (x0, _, x1, _) in zip(prep.regions, strip.panel_boxes):
        idx = [i for i, p in enumerate(prep.cells.positions.tolist()) if p in set(pos.tolist())]
        xs = prep.cells.centres[idx, 0]
        assert np.all((xs >= x0) & (xs < x1))


def test_processor_is_the_real_qwen_processor_after_downsizing(vlm):
    """The downsized strip through the processor equals the stock Qwen2VLImageProcessorPil's patches of the same
    pixels (our `patchify`, used by the recipe, too), and the downsizing is the documented two-step area average."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil
    proc = vlm.processor
    strip = synthetic(1, seed=7)[0]
    small = proc.downsize(strip.image)
    assert small.size == (336, 56)
    want_small = strip.image.reduce(2).resize((336, 56), Image.BOX)
    assert np.array_equal(np.asarray(small), np.asarray(want_small))
    stock = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                     size={"shortest_edge": 784, "longest_edge": 10 ** 6})
    ref = stock(images=[small], return_tensors="pt")
    ours = proc(text=[proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}],
                                               add_generation_prompt=True, tokenize=False)],
                images=[strip.image], return_tensors="pt")
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-6)
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    patches, grid = qwen.patchify(np.asarray(small))
    assert grid == [1, 4, 24] and torch.allclose(patches, ref["pixel_values"], atol=1e-6)


def test_training_pixels_equal_the_processors():
    """The recipe composes strips from cached half-size panels; they must be the very pixels the processor makes of
    the `synthetic` strip with the same attributes."""
    proc = qwen.QwenComicProcessor()
    for seed in (0, 3):
        strip = synthetic(1, seed=seed)[0]
        attrs, cue, offsets = sample_strip_attrs(np.random.default_rng(seed))
        got = qwen.training_strip(proc, attrs, cue, offsets)
        assert np.array_equal(got, np.asarray(proc.downsize(strip.image)))


def test_recipe_smoke_trains_saves_loads_and_repeats(tmp_path):
    from gazekit.organism.train import train
    info = train(str(tmp_path / "a"), steps=3, batch=4, family="qwen2_vl", progress=False, log_every=1)
    assert [r["step"] for r in info["log"]] == [0, 1, 2]
    assert info["log"][0]["loss"] > 3.0  # untrained: about log(vocab size)
    model, proc = qwen.load_qwen_organism(str(tmp_path / "a"))
    v = gazekit.load(model, proc)
    assert v.family == "qwen2_vl" and isinstance(v.ask(synthetic(1)[0], gazekit.VQA_QUESTION, max_new_tokens=2), str)
    train(str(tmp_path / "b"), steps=3, batch=4, family="qwen2_vl", progress=False)
    model_b, _ = qwen.load_qwen_organism(str(tmp_path / "b"))
    for (n, p), (_, q) in zip(model.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(p, q), n


def test_held_out_steering_matches_the_card(vlm):
    """On held-out test strips: the top-K heads redirect the whole-strip answer more often than size-matched random
    heads do, in line with the measured numbers stored with the weights (a regression check, not the target)."""
    import gazekit.evaluate as ev
    from gazekit.organism.evaluate import DISCOVERY_SEED, TEST_SEED
    with open(os.path.join(qwen.QWEN_WEIGHTS_DIR, "gazekit_meta.json")) as f:
        meta = json.load(f)
    measured = meta["measured"]
    scores = gazekit.discover(vlm, synthetic(30, seed=DISCOVERY_SEED), progress=False)
    strips = synthetic(20, seed=TEST_SEED)
    res = ev.vqa(vlm, strips, scores, k=vlm.recommended_k, judge="exact", max_new_tokens=6, control_seeds=1,
                 seed=0, progress=False)
    top = res.accuracy("top", nondefault=True)
    rnd = res.accuracy("random", nondefault=True)
    assert top >= measured["vqa_top"] - 0.2, (top, measured)
    assert rnd <= measured["vqa_random"] + 0.15, (rnd, measured)
    assert top > rnd
