"""The reference code's behaviour, reachable by name (docs/reference-parity.md): each expectation here is built
from the reference's rule written out by hand, not from gazekit's code."""
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import gazekit  # noqa: E402
import gazekit.comics  # noqa: E402,F401
from gazekit import GazeScores, Head, Strip  # noqa: E402
from gazekit.judges import ClaudeJudge, Verdict, is_baseline_copy  # noqa: E402

COLOURS = [(200, 0, 0), (0, 150, 0), (0, 0, 220), (250, 200, 0), (90, 30, 160), (0, 180, 180)]


# --------------------------------------------------------------------------------------------- strip (step 5)
def test_reference_strip_pixels_equal_a_hand_built_image():
    # (width, height) of each panel and its width at height 256 by the reference's rule:
    # int(w * 256 / h), then 32 * round(x / 32) with Python's round (halves to even), at least 32
    sizes = [(100, 128), (120, 128), (101, 128), (70, 100), (300, 256), (13, 256)]
    widths = [192, 256, 192, 192, 288, 32]  # 200 -> 6.25 -> 6; 240 -> 7.5 -> 8 (even); 202; 179 -> 5.6; 300 -> 9.4; 13
    panels = [Image.new("RGB", wh, c) for wh, c in zip(sizes, COLOURS)]
    strip = Strip.from_panels(panels, style="reference")
    expected = np.empty((256, sum(widths), 3), dtype=np.uint8)
    x = 0
    for w, c in zip(widths, COLOURS):
        expected[:, x:x + w] = c
        x += w
    x = 0
    for w in widths[:-1]:  # a 6 px white band centred on each boundary: 3 px of the left panel, 3 of the right
        x += w
        expected[:, x - 3:x + 3] = 255
    assert strip.image.size == (sum(widths), 256) and sum(widths) % 32 == 0
    np.testing.assert_array_equal(np.asarray(strip.image), expected)
    starts = np.cumsum([0] + widths[:-1])
    assert strip.panel_boxes == [(float(a), 0.0, float(a + w), 256.0) for a, w in zip(starts, widths)]
    assert [b[0] for b in strip.token_boxes[1:]] == [b[2] for b in strip.token_boxes[:-1]]  # columns tile the strip
    # the default strip keeps its own layout: 30 px of gaps, no panel pixel painted over
    assert Strip.from_panels(panels).image.width == sum(widths) + 5 * 6


def test_reference_strip_resamples_with_lanczos():
    rng = np.random.default_rng(0)
    panels = [Image.fromarray(rng.integers(0, 255, (128, 96, 3), dtype=np.uint8)) for _ in range(6)]
    strip = np.asarray(Strip.from_panels(panels, style="reference").image)
    for i, p in enumerate(panels):  # 96 x 128 -> 192 x 256; away from the bands the panel is PIL's LANCZOS resize
        want = np.asarray(p.resize((192, 256), Image.LANCZOS))
        np.testing.assert_array_equal(strip[:, 192 * i + 3:192 * (i + 1) - 3], want[:, 3:-3])


def test_load_folder_reference_style(tmp_path):
    comic = tmp_path / "comic1"
    comic.mkdir()
    panels = [Image.new("RGB", (100, 128), c) for c in COLOURS]
    for k, p in enumerate(panels, 1):
        p.save(comic / f"p{k}.png")
    [s] = gazekit.comics.load_folder(tmp_path, style="reference")
    assert s.image.size == (6 * 192, 256)
    assert np.asarray(s.image)[0, 192 - 3:192 + 3].tolist() == [[255, 255, 255]] * 6
    with pytest.raises(ValueError, match="style must be one of"):
        gazekit.comics.load_folder(tmp_path, style="paper")


def test_comics_windows_reference_stay_within_one_interior_page(tmp_path):
    book = tmp_path / "7"
    book.mkdir()
    img = Image.new("RGB", (40, 40), (10, 10, 10))
    for page in range(12):  # 12 pages: the reference skips pages 0-4 and 7-11, leaving 5 and 6
        for panel in range(7 if page in (5, 6) else 3):
            img.save(book / f"{page}_{panel}.jpg")
    for page in (0, 11):  # first/last pages with plenty of panels are still skipped
        for panel in range(3, 9):
            img.save(book / f"{page}_{panel}.jpg")
    strips = gazekit.comics.comics_windows(tmp_path, 20, seed=0, style="reference")
    assert len(strips) == 20
    for s in strips:
        name, page, start = s.id.split("_page")[0], *s.id.split("_page")[1].split("_start")
        assert name == "7" and int(page) in (5, 6) and int(start) in (0, 1)
    assert {s.id for s in strips} == {"7_page5_start0", "7_page5_start1", "7_page6_start0", "7_page6_start1"}


# ------------------------------------------------------------------------------------------ prompts (1, 3, 4)
def test_panel_question_reference_ordinals():
    for k, o in enumerate(["1st", "2nd", "3rd", "4th", "5th", "6th"], 1):
        assert gazekit.panel_question(k, style="reference") == (
            "Look carefully at this six-panel comic strip. "
            f"What is happening in the {o} panel from the left? Answer briefly.")
    assert "the first panel" in gazekit.panel_question(1)
    with pytest.raises(ValueError, match="panel must be 1..6"):
        gazekit.panel_question(7, style="reference")


def test_reference_prompts_are_reachable():
    assert gazekit.REFERENCE_TRAJECTORY_PROMPT.endswith("Start each panel description with 'Panel 1:', "
                                                        "'Panel 2:', and so on.")
    assert gazekit.REFERENCE_DYNAMIC_PROMPT.startswith("Please describe each panel of this comic strip in order "
                                                       "as I point you to them.")
    assert "SHORT \u2014 one brief sentence per panel" in gazekit.REFERENCE_DYNAMIC_PROMPT


# ------------------------------------------------------------------------------------------ controls (10, 11)
HAND_SCORES = np.array([[0.9, 0.05, 0.3, 0.01],
                        [0.02, 0.8, 0.04, 0.5]])


def test_reference_sampler_by_hand():
    g = GazeScores(matrix=None, scores=HAND_SCORES)
    # top 2: L0.H0 (0.9), L1.H1 (0.8). numpy's 50th percentile of the 8 scores: (0.05 + 0.3) / 2 = 0.175.
    # candidates in (layer, head) order outside the top 2 with score <= 0.175:
    candidates = [Head(0, 1), Head(0, 3), Head(1, 0), Head(1, 2)]
    # torch.randperm(4, generator=torch.Generator().manual_seed(s)) on torch's CPU generator:
    perms = {0: [0, 1, 3, 2], 1: [1, 3, 2, 0], 42: [2, 3, 0, 1]}
    for seed, perm in perms.items():
        assert torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist() == perm  # guard
        c = g.controls(2, pool="reference", seed=seed, percentile=50)
        assert list(c) == [candidates[perm[0]], candidates[perm[1]]]
        assert c.pool == "reference" and c.pool_size == 4 and c.cutoff == pytest.approx(0.175)
    # the 5th percentile (the reference's VQA control): 0.01 + 0.35 * (0.02 - 0.01) = 0.0135 -> only L0.H3;
    # min(k, candidates) = 1 head for k = 2, and it says so
    with pytest.warns(UserWarning, match="returning 1, not 2"):
        c = g.controls(2, pool="reference", seed=0)
    assert list(c) == [Head(0, 3)] and c.requested == 2 and c.cutoff == pytest.approx(0.0135)


def test_default_control_is_random_size_matched_and_never_the_bottom_k():
    rng = np.random.default_rng(3)
    g = GazeScores(matrix=None, scores=rng.random((3, 16)))  # 48 heads, like the organism
    k = 7
    bottom = set(g.ranking()[-k:])
    top = set(g.top(k))
    median = np.median(g.scores)
    draws = [g.controls(k, seed=s) for s in range(6)]
    assert len({tuple(d) for d in draws}) == 6  # a different draw for every seed
    for d in draws:
        assert len(d) == k and len(set(d)) == k
        assert set(d) != bottom and not set(d) & top
        assert all(g.scores[h] <= median for h in d)
        assert d.pool == "below-median" and d.pool_size >= 2 * k
    assert g.controls(k, seed=4) == draws[4]  # seeded
    with pytest.raises(ValueError, match="pool must be one of"):
        g.controls(k, pool="bottom")


# ------------------------------------------------------------------------------------------- copy rule (14)
@pytest.mark.parametrize("answer, unsteered, reference, gazekit_rule", [
    ("Panel 3: A dog runs.", "a dog runs", True, False),          # "Panel N:" stripped only by the reference
    ("panel 12 : Hello world", "Hello world.", True, False),
    ("The cat sat, on the mat!", "the cat sat on the mat", True, True),  # punctuation
    ("", "", False, True),                                           # the reference: an empty text is no copy
    ("Panel 2:", "Panel 5:", False, False),                          # empty after the prefix is dropped
    ("It's a dog", "its a dog", False, False),                       # "it s" vs "its"
    # 13 words each, one differs: 12 / 14 = 0.857 >= 0.85
    ("one two three four five six seven eight nine ten eleven twelve thirteen",
     "one two three four five six seven eight nine ten eleven twelve fourteen", True, True),
    # 12 words each, one differs: 11 / 13 = 0.846 < 0.85
    ("one two three four five six seven eight nine ten eleven twelve",
     "one two three four five six seven eight nine ten eleven zero", False, False),
])
def test_copy_rule_tricky_pairs(answer, unsteered, reference, gazekit_rule):
    assert is_baseline_copy(answer, unsteered, style="reference") is reference
    assert is_baseline_copy(answer, unsteered) is gazekit_rule


# ---------------------------------------------------------------------------------------- Spearman (17)
def test_per_strip_spearman_hand_computed():
    from gazekit.evaluate import reference_spearman
    a = reference_spearman([2, 3, 4, 5, 6, 1], [2, 3, 4, 5, 6, 1])               # 1
    b = reference_spearman([2, 3, 4, 5, 6, 1], [None, None, 3, 3, 3, None])      # constant: NaN -> 0
    c = reference_spearman([2, 3, 4, 5, 6, 1], [2, None, None, None, None, 1])   # 2 judged: does not count
    # d = rank differences (1, -1, 1, -1, 1, -1): rho = 1 - 6 * 6 / (6 * 35) = 0.828571...
    d = reference_spearman([2, 1, 4, 3, 6, 5], [1, 2, 3, 4, 5, 6])
    assert (a, b, c) == (1.0, 0.0, None) and d == pytest.approx(1 - 36 / 210)
    assert np.mean([a, b, d]) == pytest.approx((1 + 0 + 1 - 36 / 210) / 3)


def test_dynamic_headline_is_the_per_strip_mean(fake):
    from gazekit.comics import synthetic
    from gazekit.evaluate import dynamic, reference_spearman
    vlm, scores = fake
    res = dynamic(vlm, synthetic(3, seed=5), scores, every=None, progress=False, control_seeds=1)
    t = res.table
    for cond, key in (("top", "top@k4"), ("unsteered", "unsteered")):
        per = [reference_spearman(list(g["target"]), [None if j else m for m, j in zip(g["verdict_panel"], g["junk"])])
               for _, g in t[t.condition == cond].groupby("strip")]
        per = [r for r in per if r is not None]
        assert res.extra[key]["spearman"] == pytest.approx(np.mean(per))
    assert res.extra["top@k4"]["spearman"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- Claude judge (13)
class _FakeAnthropic:
    def __init__(self, replies):
        self.replies, self.sent = list(replies), []
        self.messages = self

    def create(self, **kw):
        self.sent.append(kw)
        r = self.replies.pop(0)
        if isinstance(r, Exception):
            raise r
        return types.SimpleNamespace(content=[types.SimpleNamespace(type="text", text=r)])


EXPECTED_TEXT = (
    'This is a 6-panel comic strip (panels numbered 1 to 6 from left to right).\n\n'
    'Baseline answer (no intervention): "A dog runs."\n\n'
    'Steered answer: "Panel 1: a cat sleeps"\n\n'
    "IMPORTANT: Ignore any panel numbering inside the steered answer ('Panel 1:', 'Panel 2:'). The model often "
    "numbers sequentially regardless of which panel it is actually describing. Match by VISUAL CONTENT.\n\n"
    "Pick exactly one panel (an integer 1..6) whose visual content the steered answer best describes \u2014 the "
    "action, objects, or scene that uniquely identifies that panel.\n\n"
    "If the answer is incoherent, repetitive, degenerate, empty, or just numbers/labels, set is_junk=true and "
    "matched_panel=null.\n\n"
    "If the answer is generic and could fit multiple panels, still pick whichever panel the answer best matches "
    "based on any specific content present.\n\n"
    "Return ONLY a JSON object:\n"
    '{"matched_panel": <1..6 or null>, "is_junk": <true/false>, "reasoning": "<one sentence>"}}')


def test_claude_reference_prompt_through_a_fake_client():
    strip = Strip.from_panels([Image.new("RGB", (64, 64), c) for c in COLOURS], style="reference")
    client = _FakeAnthropic(['Here: {"matched_panel": 4, "is_junk": false, "reasoning": "the cat"}'])
    judge = ClaudeJudge(client=client, style="reference")
    v = judge("Panel 1: a cat sleeps", strip, baseline="A dog runs.")
    assert v == Verdict(4, reason="the cat")
    [kw] = client.sent
    assert kw["model"] == "claude-sonnet-4-6" and kw["max_tokens"] == 300
    assert set(kw) == {"model", "max_tokens", "messages"}  # no tools, no temperature: the reference's request
    image, text = kw["messages"][0]["content"]
    assert text == {"type": "text", "text": EXPECTED_TEXT}
    assert image["source"]["media_type"] == "image/jpeg"
    import base64
    import io
    sent = Image.open(io.BytesIO(base64.b64decode(image["source"]["data"])))
    assert sent.format == "JPEG" and sent.size == strip.image.size
    assert judge.name == "claude-reference"


def test_claude_reference_reply_rules():
    strip = Strip.from_panels([Image.new("RGB", (64, 64), c) for c in COLOURS])
    replies = ['{"matched_panel": null, "is_junk": true, "reasoning": "babble"}',
               '{"matched_panel": true, "is_junk": false, "reasoning": "bool"}',      # a bool is no panel
               '{"matched_panel": "2", "is_junk": false, "reasoning": "string"}',     # int("2") is
               '{"matched_panel": 9, "is_junk": false, "reasoning": "out of range"}',
               "no json at all",
               ValueError("bad request")]
    judge = ClaudeJudge(client=_FakeAnthropic(replies), style="reference", sleep=lambda s: None)
    got = [judge("a cat", strip) for _ in replies]
    assert [v.panel for v in got] == [None, None, 2, None, None, None]
    assert [v.junk for v in got] == [True, True, False, True, True, True]
    # an unreadable reply or an API error: the reference's junk miss ("error: ..."), recorded as failed too
    assert got[4].failed and got[4].reason.startswith("error:") and got[5].failed and "bad request" in got[5].reason
    assert not any(v.hit(2) for v in got[:2] + got[3:])
    assert "Baseline answer" not in judge.client.sent[0]["messages"][0]["content"][1]["text"]  # none given


# --------------------------------------------------------------------------------------- gaze_scores.npy (7)
def test_gaze_scores_npy_written_and_read_back(tmp_path):
    g = GazeScores(matrix=None, scores=HAND_SCORES.copy())
    p = g.save(tmp_path / "gaze_head_ranking.json")
    npy = np.load(tmp_path / "gaze_scores.npy")
    assert npy.dtype == np.float32 and npy.shape == (2, 4)
    np.testing.assert_array_equal(npy, HAND_SCORES.astype(np.float32))
    (tmp_path / "gaze_head_ranking.gazekit.npz").unlink()  # as the reference leaves it: JSON + npy
    rows = json.loads(p.read_text())[:3]  # a ranking JSON cut to its top 3 still gets every score from the npy
    p.write_text(json.dumps(rows))
    back = GazeScores.load(p)
    np.testing.assert_allclose(back.scores, HAND_SCORES, rtol=1e-6)
    # an npy of another ranking is not used: unlisted heads stay -inf
    np.save(tmp_path / "gaze_scores.npy", np.zeros((2, 4), np.float32))
    assert np.isinf(GazeScores.load(p).scores).sum() == 5


# ------------------------------------------------------------------------------------------------ presets
def test_vqa_reference_preset_config_and_copy_rule(fake):
    from gazekit.comics import synthetic
    from gazekit.evaluate import vqa
    vlm, scores = fake
    strips = synthetic(3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the reference pool holds fewer than K heads here
        res = vqa(vlm, strips, scores, judge="caption", preset="reference", progress=False)
    cfg = res.config
    assert cfg["preset"] == "reference" and cfg["seed"] == 42 and cfg["control_pool"] == "reference"
    assert cfg["control_seeds"] == [42, 43, 44] and cfg["k_rule"] == "the model's recommended_k"
    assert cfg["prompt"] == gazekit.VQA_QUESTION == "What is the main action or event happening in this comic strip? "\
        "Answer briefly."
    t = res.table
    top = t[t.condition == "top"]
    # every target, the default panel's included, goes through the copy rule: steering to the default panel
    # reproduces the unsteered answer, a copy, a miss (gazekit's default rule would score it a hit)
    dflt = top[top.target == top.default_panel]
    assert len(dflt) == 3 and dflt.baseline_copy.all() and not dflt.hit.any() and dflt.verdict_panel.isna().all()
    assert top[top.target != top.default_panel].hit.all()
    default = vqa(vlm, strips, scores, judge="caption", progress=False)
    assert default.config["preset"] == "gazekit" and default.config["control_pool"] == "below-median"
    d = default.table
    assert d[(d.condition == "top") & (d.target == d.default_panel)].hit.all()
    assert set(default.controls["k4"]["seeds"]) == {0, 1, 2}
    assert "pool `below-median`" in default.to_markdown()


def test_dynamic_reference_preset(fake):
    from gazekit.comics import synthetic
    from gazekit.evaluate import dynamic
    from gazekit.evaluate.protocols import _reference_derangements
    vlm, scores = fake
    strips = synthetic(3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = dynamic(vlm, strips, scores, judge="caption", preset="reference", progress=False,
                      conditions=("top",))
    assert res.config["phase"] == "decode" and res.config["prompt"] == gazekit.REFERENCE_DYNAMIC_PROMPT
    # the reference's schedules: numpy RandomState(42), permutations redrawn until no fixed point, strip by strip
    rng = np.random.RandomState(42)
    want = []
    while len(want) < 3:
        p = rng.permutation(6).tolist()
        if all(p[i] != i for i in range(6)):
            want.append([x + 1 for x in p])
    assert _reference_derangements(3, 42) == want
    got = [json.loads(s) for s in res.table.drop_duplicates("strip_index").sort_values("strip_index")["schedule"]]
    assert got == want


def test_cli_preset_option():
    from gazekit import cli
    a = cli.build_parser().parse_args(["vqa", "--preset", "reference"])
    assert a.preset == "reference" and a.seed is None and a.phase is None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["vqa", "--preset", "paper"])
    assert cli._questions(cli.build_parser().parse_args(["discover", "--preset", "reference"]))[0] == \
        gazekit.panel_question(1, style="reference")
    assert cli._questions(cli.build_parser().parse_args(["discover"])) is None


def test_cli_preset_reference_end_to_end(monkeypatch, tmp_path):
    from fakes import FakeVLM, fake_scores, install_fake_steer

    from gazekit import cli
    install_fake_steer(monkeypatch)
    vlm = FakeVLM()
    monkeypatch.setattr(cli, "_load_vlm", lambda a: vlm)
    ranking = tmp_path / "ranking.json"
    fake_scores(vlm).save(ranking)
    assert (tmp_path / "gaze_scores.npy").exists()  # beside the ranking, for the reference's scripts
    out = tmp_path / "dyn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert cli.main(["dynamic", "--preset", "reference", "--judge", "exact", "--strips", "synthetic:2:0",
                         "--heads", str(ranking), "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((out / "dynamic_config.json").read_text())
    assert cfg["preset"] == "reference" and cfg["phase"] == "decode" and cfg["seed"] == 42
    assert cfg["control_pool"] == "reference" and cfg["prompt"] == gazekit.REFERENCE_DYNAMIC_PROMPT
    assert "controls" in cfg
