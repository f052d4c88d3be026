"""Every exercise check passes on the notebook's solution and fails on the student stub and on planted wrong answers
(a renormalised score, an off-by-one region, a break reported one token early, a bias that touches text tokens)."""
from __future__ import annotations

import numpy as np
import pytest

from gazekit import course


# -- the solutions as the notebooks give them ---------------------------------------------------------------------------
def panel_tokens(rows, cols, width, height, box):
    x0, y0, x1, y1 = box
    out = []
    for r in range(rows):
        for c in range(cols):
            x, y = (c + 0.5) * width / cols, (r + 0.5) * height / rows
            if x0 <= x < x1 and y0 <= y < y1:
                out.append(r * cols + c)
    return out


def gaze_scores(matrix):
    return np.diagonal(matrix, axis1=-2, axis2=-1).mean(-1)


def ranking(scores):
    H = scores.shape[1]
    order = np.argsort(-scores.ravel(), kind="stable")
    return [(int(i) // H, int(i) % H) for i in order]


def staircase_break(panels):
    for t in range(1, len(panels)):
        if panels[t] < panels[t - 1]:
            return t
    return None


def bias_row(n_keys, image_positions, target_positions, strength):
    bias = np.zeros(n_keys)
    bias[list(image_positions)] = -strength
    bias[list(target_positions)] = strength
    return bias


def schedule(order, every):
    return {i * every: panel for i, panel in enumerate(order)}


def ranking_agreement(scores_a, scores_b, k):
    from scipy.stats import spearmanr

    rho = spearmanr(scores_a.ravel(), scores_b.ravel()).statistic
    top = [set(np.argsort(-s.ravel(), kind="stable")[:k]) for s in (scores_a, scores_b)]
    return rho, len(top[0] & top[1])


def panel_attention(attn_row, regions):
    return np.array([attn_row[list(pos)].sum() for pos in regions])


def panel_attention_renormalised(attn_row, regions):
    mass = panel_attention(attn_row, regions)
    return mass / mass.sum() if mass.sum() else mass


def panel_attention_mean(attn_row, regions):
    return np.array([attn_row[list(pos)].mean() for pos in regions])


def value_weighted(attn_row, value_norms, regions):
    w = attn_row * value_norms
    return panel_attention(w / w.sum(), regions)


def value_weighted_unnormalised(attn_row, value_norms, regions):
    return panel_attention(attn_row * value_norms, regions)


def value_weighted_over_image(attn_row, value_norms, regions):
    mass = panel_attention(attn_row * value_norms, regions)
    return mass / mass.sum()


NF4 = course.NF4_LEVELS


def nf4_roundtrip(weights, block):
    flat = np.asarray(weights, dtype=np.float32).ravel()
    out = np.empty_like(flat)
    for i in range(0, flat.size, block):
        chunk = flat[i:i + block]
        absmax = np.abs(chunk).max()
        idx = np.abs(chunk[:, None] / absmax - NF4[None, :]).argmin(1)
        out[i:i + block] = NF4[idx] * absmax
    return out.reshape(np.shape(weights))


def nf4_roundtrip_uniform_grid(weights, block):
    flat = np.asarray(weights, dtype=np.float32).ravel()
    out = np.empty_like(flat)
    grid = np.linspace(-1, 1, 16)
    for i in range(0, flat.size, block):
        chunk = flat[i:i + block]
        absmax = np.abs(chunk).max()
        out[i:i + block] = grid[np.abs(chunk[:, None] / absmax - grid[None, :]).argmin(1)] * absmax
    return out.reshape(np.shape(weights))


def nf4_roundtrip_one_scale(weights, block):
    return nf4_roundtrip(weights, np.asarray(weights).size)   # one absmax for the whole tensor


def box_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box_iou_plus_one(a, b):
    a2, b2 = (a[0], a[1], a[2] + 1, a[3] + 1), (b[0], b[1], b[2] + 1, b[3] + 1)
    return box_iou(a2, b2)


def box_iou_sum_of_areas(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]))


def mean_ablation(outputs):
    return np.cumsum(outputs, axis=0) / np.arange(1, len(outputs) + 1)[:, None]


def mean_ablation_whole_sequence(outputs):
    return np.broadcast_to(outputs.mean(0), outputs.shape)


def mean_ablation_excluding_t(outputs):
    out = np.zeros_like(outputs)
    for t in range(1, len(outputs)):
        out[t] = outputs[:t].mean(0)
    return out


def stub(*args):
    raise NotImplementedError("your code here")


# -- planted wrong answers -----------------------------------------------------------------------------------------------
def panel_tokens_off_by_one(rows, cols, width, height, box):
    return [i + 1 for i in panel_tokens(rows, cols, width, height, box)]


def panel_tokens_inclusive(rows, cols, width, height, box):  # corners, not centres: takes neighbouring cells too
    x0, y0, x1, y1 = box
    return [r * cols + c for r in range(rows) for c in range(cols)
            if c * width / cols <= x1 and (c + 1) * width / cols >= x0
            and r * height / rows <= y1 and (r + 1) * height / rows >= y0]


def gaze_scores_renormalised(matrix):
    return gaze_scores(matrix / matrix.sum(-1, keepdims=True))


def gaze_scores_sum(matrix):
    return np.diagonal(matrix, axis1=-2, axis2=-1).sum(-1)


def ranking_ascending(scores):
    return ranking(-scores)


def ranking_unstable_ties(scores):
    H = scores.shape[1]
    order = sorted(range(scores.size), key=lambda i: (-scores.ravel()[i], -i))
    return [(i // H, i % H) for i in order]


def staircase_break_early(panels):
    t = staircase_break(panels)
    return None if t is None else t - 1


def staircase_break_on_change(panels):
    for t in range(1, len(panels)):
        if panels[t] != panels[t - 1] and panels[t] != panels[t - 1] + 1:
            return t
    return None


def bias_row_touches_text(n_keys, image_positions, target_positions, strength):
    bias = np.full(n_keys, -float(strength))
    bias[list(target_positions)] = strength
    return bias


def bias_row_target_overwritten(n_keys, image_positions, target_positions, strength):
    bias = np.zeros(n_keys)
    bias[list(target_positions)] = strength
    bias[list(image_positions)] = -strength
    return bias


def schedule_one_based_tokens(order, every):
    return {i * every + 1: panel for i, panel in enumerate(order)}


def schedule_zero_based_panels(order, every):
    return {i * every: panel - 1 for i, panel in enumerate(order)}


def ranking_agreement_pearson(scores_a, scores_b, k):
    return float(np.corrcoef(scores_a.ravel(), scores_b.ravel())[0, 1]), ranking_agreement(scores_a, scores_b, k)[1]


def ranking_agreement_bottom_k(scores_a, scores_b, k):
    top = [set(np.argsort(s.ravel(), kind="stable")[:k]) for s in (scores_a, scores_b)]
    return ranking_agreement(scores_a, scores_b, k)[0], len(top[0] & top[1])


def fair_control(matrix, k):  # the solution, written from the exercise text
    diag = np.diagonal(matrix, axis1=-2, axis2=-1).mean(-1)
    share = matrix.sum(-1).mean(-1)
    order = sorted(np.ndindex(diag.shape), key=lambda h: -diag[h])
    looking = [h for h in order[k:] if share[h] >= 0.5]
    cutoff = np.median([diag[h] for h in looking])
    return [h for h in looking if diag[h] <= cutoff]


def fair_control_keeps_top_k(matrix, k):
    diag = np.diagonal(matrix, axis1=-2, axis2=-1).mean(-1)
    share = matrix.sum(-1).mean(-1)
    looking = [h for h in np.ndindex(diag.shape) if share[h] >= 0.5]
    cutoff = np.median([diag[h] for h in looking])
    return [h for h in looking if diag[h] <= cutoff]


def fair_control_median_of_all_heads(matrix, k):
    diag = np.diagonal(matrix, axis1=-2, axis2=-1).mean(-1)
    share = matrix.sum(-1).mean(-1)
    order = sorted(np.ndindex(diag.shape), key=lambda h: -diag[h])
    return [h for h in order[k:] if share[h] >= 0.5 and diag[h] <= np.median(diag)]


def schedule_from_captions(captions, story):
    from gazekit.judges import words
    return [1 + int(np.argmax([len(set(words(s)) & set(words(c))) for c in captions])) for s in story]


def schedule_from_captions_exact_match(captions, story):
    return [1 + [c.lower() for c in captions].index(s.lower().strip(".!")) if s.lower().strip(".!") in
            [c.lower() for c in captions] else 1 for s in story]


def schedule_from_captions_zero_based(captions, story):
    return [p - 1 for p in schedule_from_captions(captions, story)]


def box_lift(name, unsteered, steered):
    from gazekit.evaluate import mentions
    base = np.mean([mentions(t, name) for t in unsteered])
    rate = np.mean([mentions(t, name) for t in steered])
    return base, rate, rate / base if base else float("nan")


def box_lift_substring(name, unsteered, steered):
    base = np.mean([name in t for t in unsteered])
    rate = np.mean([name in t for t in steered])
    return base, rate, rate / base if base else float("nan")


def box_lift_inf(name, unsteered, steered):
    base, rate, _ = box_lift(name, unsteered, steered)
    return base, rate, rate / base if base else float("inf")


def gaze_profile(scores, k):
    L, H = scores.shape
    top = np.argsort(-scores.ravel(), kind="stable")[:k]
    return float((scores >= 0.5).mean()), float(np.mean([(i // H) / (L - 1) for i in top]))


def gaze_profile_count(scores, k):  # a count does not compare a 48-head model with a 1152-head one
    return float((scores >= 0.5).sum()), gaze_profile(scores, k)[1]


def gaze_profile_depth_over_l(scores, k):  # layer / L: the last layer never reaches 1
    L, H = scores.shape
    top = np.argsort(-scores.ravel(), kind="stable")[:k]
    return gaze_profile(scores, k)[0], float(np.mean([(i // H) / L for i in top]))


def gaze_profile_strict(scores, k):  # > 0.5 drops the head on the threshold
    return float((scores > 0.5).mean()), gaze_profile(scores, k)[1]


def gaze_profile_unstable_ties(scores, k):  # ties broken toward the later layer
    L, H = scores.shape
    top = sorted(range(scores.size), key=lambda i: (-scores.ravel()[i], -i))[:k]
    return gaze_profile(scores, k)[0], float(np.mean([(i // H) / (L - 1) for i in top]))


CHECKS = [
    (course.check_mean_ablation, mean_ablation, [mean_ablation_whole_sequence, mean_ablation_excluding_t]),
    (course.check_panel_attention, panel_attention, [panel_attention_renormalised, panel_attention_mean]),
    (course.check_value_weighted, value_weighted, [value_weighted_unnormalised, value_weighted_over_image]),
    (course.check_nf4_roundtrip, nf4_roundtrip, [nf4_roundtrip_uniform_grid, nf4_roundtrip_one_scale]),
    (course.check_box_iou, box_iou, [box_iou_plus_one, box_iou_sum_of_areas]),
    (course.check_panel_tokens, panel_tokens, [panel_tokens_off_by_one, panel_tokens_inclusive]),
    (course.check_gaze_scores, gaze_scores, [gaze_scores_renormalised, gaze_scores_sum]),
    (course.check_ranking, ranking, [ranking_ascending, ranking_unstable_ties]),
    (course.check_staircase_break, staircase_break, [staircase_break_early, staircase_break_on_change]),
    (course.check_bias_row, bias_row, [bias_row_touches_text, bias_row_target_overwritten]),
    (course.check_fair_control, fair_control, [fair_control_keeps_top_k, fair_control_median_of_all_heads]),
    (course.check_schedule, schedule, [schedule_one_based_tokens, schedule_zero_based_panels]),
    (course.check_schedule_from_captions, schedule_from_captions,
     [schedule_from_captions_exact_match, schedule_from_captions_zero_based]),
    (course.check_box_lift, box_lift, [box_lift_substring, box_lift_inf]),
    (course.check_gaze_profile, gaze_profile, [gaze_profile_count, gaze_profile_depth_over_l, gaze_profile_strict,
                                                gaze_profile_unstable_ties]),
    (course.check_ranking_agreement, ranking_agreement, [ranking_agreement_pearson, ranking_agreement_bottom_k]),
]
IDS = [c[0].__name__ for c in CHECKS]


@pytest.mark.parametrize("check,solution,wrongs", CHECKS, ids=IDS)
def test_check_passes_on_the_solution(check, solution, wrongs, capsys):
    assert check(solution) is True
    assert capsys.readouterr().out.startswith("pass:")


@pytest.mark.parametrize("check,solution,wrongs", CHECKS, ids=IDS)
def test_check_fails_on_the_stub_with_a_hint(check, solution, wrongs, capsys):
    assert check(stub) is False
    out = capsys.readouterr().out
    assert out.startswith("not yet:") and "Hint:" in out


@pytest.mark.parametrize("check,solution,wrongs", CHECKS, ids=IDS)
def test_check_fails_on_planted_wrong_answers(check, solution, wrongs, capsys):
    for wrong in wrongs:
        assert check(wrong) is False, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("FAIL") and "expected:" in out and "hint:" in out, (wrong.__name__, out)


def test_a_crashing_answer_is_reported_with_its_case(capsys):
    assert course.check_gaze_scores(lambda m: m[9, 9]) is False
    out = capsys.readouterr().out
    assert out.startswith("FAIL gaze scores, case 1") and "IndexError" in out


def test_every_listed_check_exists():
    for names in course.EXERCISES.values():
        for n in names:
            assert callable(getattr(course, n))


@pytest.mark.filterwarnings("ignore:the image-matched pool holds")
def test_fair_control_pool_is_the_pool_gazekit_draws_from():
    from gazekit.discover import GazeScores
    for seed, k in ((0, 2), (1, 1), (2, 2), (3, 3)):
        m = course._looking_matrices(seed)
        pool = course.fair_control_pool_reference(m, k)
        for draw in range(5):
            c = GazeScores.from_matrix(m).controls(k, pool="image-matched", seed=draw)
            assert c.pool_size == len(pool) and {tuple(map(int, h)) for h in c} <= set(pool)


def test_nf4_reference_equals_bitsandbytes():
    """The exercise's NF4 round trip is what bitsandbytes does to a weight (the oracle)."""
    import torch
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    assert np.allclose(course.NF4_LEVELS, bnb_functional.get_4bit_type("nf4", device="cpu").numpy())
    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(0)) * 0.05
    q, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    want = bnb_functional.dequantize_4bit(q, state).numpy()
    assert np.allclose(course.nf4_roundtrip_reference(w.numpy(), 64), want, atol=1e-6)


def test_panel_attention_and_value_weighted_equal_gazekit_on_the_organism():
    """The references for 01b and 03b are what gazekit.capture and gazekit.track compute, checked against a naive
    output_attentions=True forward of the embedded organism with the value vectors read off v_proj (the oracle)."""
    import torch
    import gazekit
    from gazekit.comics import synthetic

    vlm = gazekit.load()
    strip = synthetic(1, seed=0)[0]
    prompt = gazekit.panel_question(2)
    prep = vlm.prepare(strip, prompt)
    lm = vlm.adapter.language_model()
    values = {}
    hooks = [layer.self_attn.v_proj.register_forward_hook(lambda m, i, o, li=li: values.__setitem__(li, o[0]))
             for li, layer in enumerate(lm.layers)]
    before = vlm.model.config.get_text_config()._attn_implementation
    vlm.model.set_attn_implementation({"text_config": "eager"})   # only eager attention returns its weights
    try:
        with torch.no_grad():
            out = vlm.model(**prep, output_attentions=True, use_cache=False)
    finally:
        vlm.model.set_attn_implementation({"text_config": before})
        for h in hooks:
            h.remove()
    regions = [r.numpy() for r in prep.regions]
    att = gazekit.capture(vlm, strip, prompt)
    cfg = lm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    assert len(out.attentions) == vlm.n_layers
    for layer, attn in enumerate(out.attentions):
        for head in (0, 7, 15):
            row = attn[0, head, -1].float().numpy()
            assert np.allclose(course.panel_attention_reference(row, regions), att[layer, head], atol=1e-5)
            kv = head // group
            norms = values[layer][:, kv * head_dim:(kv + 1) * head_dim].norm(dim=-1).numpy()
            traj = gazekit.track(vlm, strip, prompt, [(layer, head)], max_new_tokens=1)
            assert np.allclose(course.value_weighted_reference(row, norms, regions), traj.weighted[0, 0], atol=1e-5)


def test_mean_ablation_reference_is_what_ablate_writes():
    """The 04c reference equals the output `gazekit.ablate(how="mean")` feeds the output projection of an ablated
    head on the organism, read at o_proj's input against the unablated outputs of the same forward."""
    import torch
    import gazekit
    from gazekit.comics import synthetic

    vlm = gazekit.load()
    strip = synthetic(1, seed=0)[0]
    prep = vlm.prepare(strip, gazekit.panel_question(4))
    layer, head = 2, 5
    o_proj = vlm.adapter.language_model().layers[layer].self_attn.o_proj
    seen = []
    hook = o_proj.register_forward_hook(lambda m, i, o: seen.append(i[0][0].detach().clone()))
    try:
        with torch.no_grad():
            vlm.model(**prep, use_cache=False)
            with gazekit.ablate(vlm, [(layer, head)], how="mean"):
                vlm.model(**prep, use_cache=False)
    finally:
        hook.remove()
    d = o_proj.in_features // vlm.n_heads
    clean, ablated = (x[:, head * d:(head + 1) * d].numpy() for x in seen)
    assert not np.allclose(clean, ablated)
    assert np.allclose(course.mean_ablation_reference(clean), ablated, atol=1e-5)


def test_gaze_profile_is_what_the_survey_reports():
    """The exercise's reference equals gazekit.survey's share of heads >= 0.5 and top-K mean relative depth."""
    from gazekit.discover import GazeScores
    from gazekit.evaluate.survey import relative_depth, score_summary
    for seed, (L, H, n, k) in enumerate([(3, 16, 8, 7), (28, 12, 20, 29), (5, 4, 3, 2)]):
        g = course._profile_scores(seed, L, H, n)
        share, depth = course.gaze_profile_reference(g, k)
        top = GazeScores(matrix=None, scores=g).top(k)
        assert share == score_summary(g)["share_ge"]
        assert depth == pytest.approx(np.mean([relative_depth(h.layer, L) for h in top]), abs=1e-12)
