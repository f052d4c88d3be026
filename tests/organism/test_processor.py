"""The organism processor's contract (the organism adapter relies on it)."""
import numpy as np
import torch
from PIL import Image

from gazekit.comics import synthetic
from gazekit.organism.processor import ComicTileProcessor
from gazekit.regions import (NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT, VQA_QUESTION, Strip, panel_question)


def _msgs(q):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]


def test_paper_prompts_tokenize_without_unknown_words():
    p = ComicTileProcessor()
    for q in [panel_question(k) for k in range(1, 7)] + [VQA_QUESTION, NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT]:
        toks = p.tokenizer.tokenize(p.apply_chat_template(_msgs(q)))
        assert "<unk>" not in toks, (q, toks)
        assert toks.count("<image>") == 1 and toks[0] == "<bos>" and toks[-2:] == ["assistant", ":"]
    assert p.tokenizer.tokenize("Zebra!") == ["<unk>", "<unk>"]
    assert p.tokenizer.tokenize("Six-panel") == ["six", "-", "panel"]


def test_token_counts_and_attributes():
    p = ComicTileProcessor()
    assert (p.image_token, p.tokens_per_tile, p.n_tiles, p.tile_size) == ("<image>", 4, 6, 32)
    s = synthetic(2, seed=0)
    text = p.apply_chat_template(_msgs(VQA_QUESTION))
    bf = p(text=[text, text], images=[x.image for x in s], tile_boxes=[x.panel_boxes for x in s])
    n_text = len(p.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert bf["input_ids"].shape == (2, n_text - 1 + 24)
    assert int((bf["input_ids"][0] == p.image_token_id).sum()) == 24
    assert bf["pixel_values"].shape == (12, 3, 32, 32)
    assert bf["attention_mask"].all()


def test_tile_order_follows_the_boxes():
    # six flat-colour panels: pixel_values[i] must be panel i's colour, normalised with mean = std = 0.5
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    strip = Strip.from_panels([Image.new("RGB", (256, 256), c) for c in colours])
    p = ComicTileProcessor()
    pv = p(text=[p.apply_chat_template(_msgs("x"))], images=[strip.image], tile_boxes=[strip.panel_boxes])["pixel_values"]
    for i, c in enumerate(colours):
        want = (torch.tensor(c, dtype=torch.float32) / 255 - 0.5) / 0.5
        assert torch.allclose(pv[i].mean(dim=(1, 2)), want, atol=1e-6)
    # default boxes: six equal-width columns of the whole image
    img = Image.fromarray(np.repeat(np.repeat(np.array(colours, dtype=np.uint8)[None], 60, 0), 50, 1))  # 60 x 300
    pv = p(text=[p.apply_chat_template(_msgs("x"))], images=[img])["pixel_values"]
    for i, c in enumerate(colours):
        assert torch.allclose(pv[i].mean(dim=(1, 2)), (torch.tensor(c, dtype=torch.float32) / 255 - 0.5) / 0.5)


def test_image_tokens_in_tile_blocks():
    # tile i's tokens are the i-th consecutive block of tokens_per_tile image tokens
    p = ComicTileProcessor()
    ids = p.encode_prompt(p.apply_chat_template(_msgs(VQA_QUESTION)))
    pos = [i for i, t in enumerate(ids) if t == p.image_token_id]
    assert pos == list(range(pos[0], pos[0] + 24))


def test_decode_and_round_trip(tmp_path):
    p = ComicTileProcessor()
    ids = p.tokenizer("red ball flies . blue dot runs", add_special_tokens=False)["input_ids"]
    eos, pad = p.tokenizer.eos_token_id, p.tokenizer.pad_token_id
    assert p.decode(ids + [eos, ids[0]]) == "red ball flies . blue dot runs"
    assert p.batch_decode(torch.tensor([ids + [eos, pad]])) == ["red ball flies . blue dot runs"]
    p.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.bin"))
    q = ComicTileProcessor.from_pretrained(tmp_path)
    text = p.apply_chat_template(_msgs(panel_question(3)))
    assert q.encode_prompt(text) == p.encode_prompt(text)
    assert (q.image_token_id, q.tokens_per_tile, q.n_tiles) == (p.image_token_id, 4, 6)
