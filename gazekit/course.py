"""Checks for the tutorials' exercises: each `check_...` runs the student's function on several cases against
gazekit's own answer and prints a pass, or the first failing case with a hint.

    from gazekit.course import check_gaze_scores
    check_gaze_scores(my_gaze_scores)        # prints "pass: ..." or what went wrong; returns True / False

The cases are small and fixed (seeded), so a check takes milliseconds and needs no model. Panel numbers shown to the
student are 1-based, as everywhere in gazekit; array axes are 0-based.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

__all__ = ["check_panel_tokens", "check_panel_attention", "check_gaze_scores", "check_value_weighted",
           "check_nf4_roundtrip", "check_box_iou", "check_ranking", "check_staircase_break", "check_bias_row",
           "check_mean_ablation", "check_fair_control", "check_schedule", "check_schedule_from_captions", "check_ranking_agreement",
           "check_box_lift", "check_gaze_profile", "EXERCISES"]


def _report(name: str, fn: Callable, cases, reference: Callable, same: Callable, hint: str) -> bool:
    """Run `fn` and `reference` on each case; print pass or the first mismatch (with the hint); return success."""
    for i, args in enumerate(cases, 1):
        want = reference(*args)
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"not yet: {name} raises NotImplementedError — replace the stub with your code. Hint: {hint}")
            return False
        except Exception as e:  # the student's bug, shown as the case it happened on
            print(f"FAIL {name}, case {i} of {len(cases)}: raised {type(e).__name__}: {e}\n  input: {_show(args)}\n"
                  f"  hint: {hint}")
            return False
        if not same(got, want):
            print(f"FAIL {name}, case {i} of {len(cases)}\n  input:    {_show(args)}\n  expected: {_show(want)}\n"
                  f"  got:      {_show(got)}\n  hint: {hint}")
            return False
    print(f"pass: {name} agrees with gazekit on all {len(cases)} cases")
    return True


def _show(x, limit: int = 300) -> str:
    with np.printoptions(precision=3, suppress=True, threshold=40):
        s = repr(x)
    return s if len(s) <= limit else s[:limit] + " ..."


def _same_array(got, want) -> bool:
    got = np.asarray(got, dtype=float)
    return got.shape == np.shape(want) and np.allclose(got, want, atol=1e-6)


# -- 01: which image tokens belong to a panel --------------------------------------------------------------------------
def panel_tokens_reference(rows: int, cols: int, width: float, height: float, box) -> list[int]:
    """Row-major indices of the `rows x cols` token cells (tiling a `width x height` image) whose centre lies in
    `box` = (x0, y0, x1, y1), left/top edges inclusive — the rule `Prepared.positions_for_box` uses."""
    x0, y0, x1, y1 = box
    ys, xs = np.divmod(np.arange(rows * cols), cols)
    cx, cy = (xs + 0.5) * width / cols, (ys + 0.5) * height / rows
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    return [int(i) for i in np.flatnonzero(inside)]


def check_panel_tokens(fn: Callable) -> bool:
    """Exercise 01: `fn(rows, cols, width, height, box) -> list of token indices` (row-major, 0-based, sorted)."""
    cases = [(2, 3, 384, 256, (0, 0, 128, 128)),        # the organism's strip: 2 rows x 3 panels, one token per panel
             (4, 6, 384, 256, (128, 0, 256, 128)),      # panel 2 of a 4 x 6 grid: 2 x 2 tokens
             (4, 6, 384, 256, (256, 128, 384, 256)),    # panel 6
             (3, 5, 300, 180, (0, 60, 300, 120)),       # the middle row of a 3 x 5 grid
             (4, 4, 100, 100, (25, 25, 50, 50))]        # box edges on cell edges: centre 37.5 in, 62.5 out
    return _report("panel tokens", fn, cases, panel_tokens_reference, lambda g, w: list(map(int, g)) == w,
                   "token (r, c) has its centre at ((c + 0.5) * width / cols, (r + 0.5) * height / rows); keep it "
                   "when x0 <= x < x1 and y0 <= y < y1; index = r * cols + c")


def panel_attention_reference(attn_row, regions) -> np.ndarray:
    """Raw attention mass per region: the sum of `attn_row` (one query's attention over all keys) over each region's
    positions — what `gazekit.capture` returns per head, NOT renormalised over the image."""
    row = np.asarray(attn_row, dtype=float)
    return np.array([row[np.asarray(pos, dtype=int)].sum() for pos in regions])


def _attention_cases():
    rng = np.random.default_rng(1)
    out = []
    for n_keys, image, per in ((40, 10, 4), (30, 3, 2), (25, 0, 1)):
        row = rng.dirichlet(np.ones(n_keys) * 0.5)                 # sums to 1 over ALL keys, text included
        regions = [np.arange(image + per * k, image + per * (k + 1)) for k in range(6)]
        out.append((row, regions))
    row = np.zeros(20); row[[2, 5, 6]] = [0.5, 0.3, 0.2]         # no attention on the image at all
    out.append((row, [np.arange(10 + 2 * k, 12 + 2 * k) for k in range(4)]))
    return out


def check_panel_attention(fn: Callable) -> bool:
    """Exercise 01b: `fn(attn_row [n_keys], regions) -> [n_regions]`, the raw attention mass on each region."""
    return _report("panel attention", fn, _attention_cases(), panel_attention_reference, _same_array,
                   "sum the row over each region's positions (row[positions].sum()); do not divide by the image's "
                   "total: a head that ignores the image must score low on every panel")


# -- 02: gaze scores and ranking from the 6x6 matrices -----------------------------------------------------------------
def _matrices(seed: int, L: int = 2, H: int = 3) -> np.ndarray:
    """Raw attention mass [L, H, 6, 6]: rows do NOT sum to 1 (the rest of the attention goes to text tokens)."""
    rng = np.random.default_rng(seed)
    m = rng.dirichlet(np.ones(8), size=(L, H, 6))[..., :6]  # 2 of 8 shares go to "text": rows sum to < 1
    return m * rng.uniform(0.2, 1.0, size=(L, H, 6, 1))


def check_gaze_scores(fn: Callable) -> bool:
    """Exercise 02a: `fn(matrix [L, H, 6, 6]) -> scores [L, H]`, the mean of each head's diagonal of raw mass."""
    from gazekit.discover import GazeScores

    cases = [(_matrices(s),) for s in range(4)]
    return _report("gaze scores", fn, cases, lambda m: GazeScores.from_matrix(m).scores, _same_array,
                   "score = mean over k of matrix[l, h, k, k] — the raw attention mass on the asked-about panel; do "
                   "not divide each row by its sum (a head that barely looks at the image would score high)")


def check_ranking(fn: Callable) -> bool:
    """Exercise 02b: `fn(scores [L, H]) -> list of (layer, head)`, all heads best first, ties by layer then head."""
    from gazekit.discover import GazeScores

    rng = np.random.default_rng(7)
    ties = np.array([[0.5, 0.1, 0.5], [0.2, 0.5, 0.1]])
    cases = [(rng.random((2, 4)),), (rng.random((3, 2)),), (ties,)]
    return _report("ranking", fn, cases, lambda s: [tuple(h) for h in GazeScores(matrix=None, scores=s).ranking()],
                   lambda g, w: [tuple(map(int, h)) for h in g] == w,
                   "sort the flattened scores descending; flat index i is (i // n_heads, i % n_heads); a stable sort "
                   "of -scores keeps ties in layer, head order")


# -- 03: where a trajectory's staircase breaks -------------------------------------------------------------------------
def staircase_break_reference(panels) -> Optional[int]:
    """First generated token (0-based) whose attended panel is lower than the one before, or None if the panels
    never go back (a staircase climbs or stays)."""
    p = np.asarray(panels)
    back = np.flatnonzero(np.diff(p) < 0)
    return int(back[0]) + 1 if back.size else None


def check_staircase_break(fn: Callable) -> bool:
    """Exercise 03: `fn(panels) -> index or None`; `panels` are 1-based panels per token (`argmax_region() + 1`)."""
    cases = [([1, 1, 2, 2, 3, 4, 5, 6],), ([1, 2, 2, 1, 3],), ([2, 3, 3, 4, 4, 2, 5, 1],), ([4],),
             ([6, 5, 6],), ([1, 1, 1, 1],), ([1, 3, 4, 2, 5],)]  # skipping a panel is no break
    return _report("staircase break", fn, cases, staircase_break_reference, lambda g, w: g == w,
                   "compare each token's panel with the previous token's; return the index of the first token that "
                   "goes back (not the one before it); equal panels are not a break; None when there is none")


def value_weighted_reference(attn_row, value_norms, regions) -> np.ndarray:
    """Value-weighted attention per region (Kobayashi et al. 2020), as `Trajectory.weighted` in the prefill:
    a_j * |v_j| renormalised over all keys, then summed over each region's positions."""
    w = np.asarray(attn_row, dtype=float) * np.asarray(value_norms, dtype=float)
    return panel_attention_reference(w / w.sum(), regions)


def check_value_weighted(fn: Callable) -> bool:
    """Exercise 03b: `fn(attn_row [n_keys], value_norms [n_keys], regions) -> [n_regions]`."""
    rng = np.random.default_rng(3)
    cases = []
    for row, regions in _attention_cases()[:3]:
        cases.append((row, rng.uniform(0.1, 3.0, row.shape), regions))
    row, regions = _attention_cases()[0]
    cases.append((row, np.ones_like(row), regions))                # equal norms: the raw attention again
    norms = np.ones_like(row); norms[regions[2]] = 10.0             # big values on panel 3 pull the weight there
    cases.append((row, norms, regions))
    return _report("value-weighted attention", fn, cases, value_weighted_reference, _same_array,
                   "multiply each attention weight by its key's value norm, divide by the sum of those products over "
                   "ALL keys (text too), then sum each region's positions")


# -- 04: the boost/suppress bias row for one head ----------------------------------------------------------------------
def bias_row_reference(n_keys: int, image_positions, target_positions, strength: float) -> np.ndarray:
    """The key bias `steer(..., mode="boost_suppress")` adds to a steered head's attention logits: +B on the target's
    image tokens, -B on every other image token, 0 on text tokens."""
    bias = np.zeros(n_keys)
    bias[list(image_positions)] = -strength
    bias[list(target_positions)] = strength
    return bias


def check_bias_row(fn: Callable) -> bool:
    """Exercise 04: `fn(n_keys, image_positions, target_positions, strength) -> bias [n_keys]`."""
    cases = [(10, range(2, 8), [4], 1e4), (12, range(3, 9), [3, 4], 5.0), (8, [1, 2, 3, 4, 5, 6], [6], 1e4),
             (6, [0, 1], [1], 2.5)]
    return _report("boost/suppress bias row", fn, cases, bias_row_reference, _same_array,
                   "start from zeros (text keys stay 0), put -strength on every image token, then +strength on the "
                   "target's tokens; the target comes last so it is not overwritten")


# -- 04b: a fair control: heads that look at the image but not at the asked-about panel ------------------------------
def fair_control_pool_reference(matrix, k: int) -> list[tuple[int, int]]:
    """The heads `GazeScores.controls(k, pool="image-matched")` draws from, as sorted (layer, head) pairs: outside
    the top k by gaze score, image share (row sums of the 6x6 matrix, averaged) >= 0.5, and gaze score <= the
    median gaze score of those looking heads."""
    from gazekit.discover import GazeScores

    g = GazeScores.from_matrix(np.asarray(matrix))
    share = g.image_share()
    top = set(g.top(k))
    looking = [h for h in g.ranking() if h not in top and share[h] >= 0.5]
    if not looking:
        return []
    cutoff = np.median([g.scores[h] for h in looking])
    return sorted((int(h[0]), int(h[1])) for h in looking if g.scores[h] <= cutoff)


def _looking_matrices(seed: int, L: int = 2, H: int = 8) -> np.ndarray:
    """[L, H, 6, 6] raw mass where some heads look at the image evenly (high share, low score), some follow the
    question (diagonal), and the rest look at text."""
    rng = np.random.default_rng(seed)
    m = _matrices(seed, L, H) * 0.4                                  # mostly text: share < 0.5
    for l in range(L):
        for h in rng.choice(H, size=H // 2, replace=False):
            m[l, h] = rng.uniform(0.09, 0.16, size=(6, 6))            # looks at the image, at every panel
        m[l, rng.integers(H)] += np.eye(6) * rng.uniform(0.3, 0.6)    # a gaze head
    return m


def check_fair_control(fn: Callable) -> bool:
    """Exercise 04b: `fn(matrix [L, H, 6, 6], k) -> list of (layer, head)`: the pool of an image-matched control
    (outside the top k, image share >= 0.5, gaze score <= the median of those heads), in any order."""
    cases = [(_looking_matrices(s), k) for s, k in ((0, 2), (1, 1), (2, 2), (3, 3))]
    return _report("fair control pool", fn, cases, fair_control_pool_reference,
                   lambda g, w: sorted(tuple(map(int, h)) for h in g) == w,
                   "score = mean of the diagonal; image share = mean over rows of each row's sum; drop the top k "
                   "first, then keep share >= 0.5, then keep score <= the median score OF THOSE heads (not of all "
                   "heads)")


# -- 04c: mean ablation, the causal running mean of a head's outputs ---------------------------------------------
def mean_ablation_reference(outputs) -> np.ndarray:
    """What `gazekit.ablate(..., how="mean")` writes for one head of a causal model: at each position t, the mean of
    the head's own outputs over positions 0..t (t included), so it is defined token by token while decoding."""
    x = np.asarray(outputs, dtype=float)
    return np.cumsum(x, axis=0) / np.arange(1, len(x) + 1)[:, None]


def check_mean_ablation(fn: Callable) -> bool:
    """Exercise 04c: `fn(outputs [T, D]) -> [T, D]`, the causal running mean of one head's outputs."""
    rng = np.random.default_rng(40)
    cases = [(rng.normal(size=(5, 3)),), (rng.normal(size=(1, 4)),),   # one token: its own output
             (np.arange(12.0).reshape(6, 2),), (rng.normal(size=(8, 1)),)]
    return _report("mean ablation", fn, cases, mean_ablation_reference, _same_array,
                   "row t is the mean of rows 0..t INCLUDING t (np.cumsum over tokens / 1, 2, ..., T); not the "
                   "mean over the whole sequence, which would let a token see the future")


# -- 05: a switching schedule ----------------------------------------------------------------------------------------
def schedule_reference(order, every: int) -> dict:
    """The schedule `steer` takes for switching every `every` generated tokens along `order` (1-based panels):
    {first token index (0-based): panel}."""
    return {i * every: int(panel) for i, panel in enumerate(order)}


def check_schedule(fn: Callable) -> bool:
    """Exercise 05: `fn(order, every) -> {token index: panel}`, as in `steer(vlm, heads, {0: 4, 8: 2})`."""
    cases = [([4, 2], 8), ([1, 2, 3, 4, 5, 6], 50), ([6, 1, 3], 5), ([2], 10)]
    return _report("schedule", fn, cases, schedule_reference, lambda g, w: {int(k): int(v) for k, v in g.items()} == w,
                   "the i-th panel of the order starts at token i * every (the first at token 0); keep panels 1-based")


# -- 05b: a schedule from captions: the story order you want, as panels ---------------------------------------------
def schedule_from_captions_reference(captions, story) -> list[int]:
    """1-based panels, one per sentence of `story`: the panel whose caption shares the most words with the
    sentence (ties: the earlier panel). `captions` are the strip's six captions in panel order."""
    from gazekit.judges import words

    panels = []
    for sentence in story:
        want = set(words(sentence))
        overlap = [len(want & set(words(c))) for c in captions]
        panels.append(int(np.argmax(overlap)) + 1)
    return panels


def check_schedule_from_captions(fn: Callable) -> bool:
    """Exercise 05b: `fn(captions, story) -> [panel, ...]` (1-based), the target order that makes a narration
    follow `story`, one sentence per segment; pass it to `steer(vlm, heads, schedule)` via `check_schedule`'s
    dict."""
    caps = ["red ball flies", "blue dot sleeps", "green sun runs", "red dot swims", "black ball sleeps",
            "orange sun flies"]
    cases = [(caps, ["the green sun runs", "a red ball flies"]),
             (caps, ["Blue dot sleeps.", "Orange sun flies!", "Red dot swims"]),
             (caps, ["black ball sleeps", "red ball flies", "blue dot sleeps"]),   # 'ball' alone would be a tie
             (caps, ["sun flies", "dot sleeps", "red"])]                            # ties go to the earlier panel
    return _report("schedule from captions", fn, cases, schedule_from_captions_reference,
                   lambda g, w: [int(p) for p in g] == w,
                   "compare words, not strings: lower-case, drop punctuation (gazekit.judges.words), count the words "
                   "a sentence shares with each caption, take the best panel (the first on a tie), 1-based")


# -- 06: ranking agreement full vs 4-bit -------------------------------------------------------------------------------
def ranking_agreement_reference(scores_a, scores_b, k: int) -> tuple[float, int]:
    """(Spearman rho over all heads' scores, number of heads shared by the two top-k lists)."""
    from gazekit.discover import GazeScores
    from gazekit.evaluate.stats import spearman

    rho = spearman(scores_a, scores_b)[0]
    top = [set(GazeScores(matrix=None, scores=np.asarray(s)).top(k)) for s in (scores_a, scores_b)]
    return rho, len(top[0] & top[1])


def check_ranking_agreement(fn: Callable) -> bool:
    """Exercise 06: `fn(scores_full [L, H], scores_q4 [L, H], k) -> (spearman_rho, shared_top_k)`."""
    rng = np.random.default_rng(6)
    a = rng.random((2, 8))
    cases = [(a, a + rng.normal(0, 0.05, a.shape), 4), (a, a ** 3, 5),  # a monotone change keeps the ranks
             (a, rng.random((2, 8)), 3), (a, -a, 2)]

    def same(g, w):
        return len(g) == 2 and np.isclose(float(g[0]), w[0], atol=1e-6) and int(g[1]) == w[1]

    return _report("ranking agreement", fn, cases, ranking_agreement_reference, same,
                   "Spearman compares ranks, not values (scipy.stats.spearmanr on the flattened scores, or "
                   "gazekit.evaluate.stats.spearman); shared = size of the intersection of the two top-k head sets")


# The 16 NF4 levels (Dettmers et al. 2023, QLoRA): quantiles of a standard normal scaled to [-1, 1], as
# bitsandbytes stores them (`bitsandbytes.functional.get_4bit_type("nf4")`).
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                       0.7229568362236023, 1.0])


def nf4_roundtrip_reference(weights, block: int = 64) -> np.ndarray:
    """What 4-bit NF4 does to a weight array: split the flattened weights into blocks of `block`, scale each block
    by its absolute maximum, replace every scaled weight by the nearest of the 16 `NF4_LEVELS`, scale back.
    Equals bitsandbytes' quantize_4bit + dequantize_4bit (float32 absmax, no double quantization)."""
    w = np.asarray(weights, dtype=np.float32)
    flat = w.ravel()
    out = np.empty_like(flat)
    for start in range(0, flat.size, block):
        chunk = flat[start:start + block]
        absmax = np.float32(np.abs(chunk).max())
        scaled = chunk / absmax if absmax > 0 else chunk
        nearest = NF4_LEVELS[np.abs(scaled[:, None] - NF4_LEVELS[None, :]).argmin(1)].astype(np.float32)
        out[start:start + block] = nearest * absmax
    return out.reshape(w.shape)


def check_nf4_roundtrip(fn: Callable) -> bool:
    """Exercise 06b: `fn(weights, block) -> dequantized weights` (same shape), NF4 with one absmax per block."""
    rng = np.random.default_rng(60)
    cases = [(rng.normal(0, 0.02, (2, 64)).astype(np.float32), 64),
             (rng.normal(0, 1.0, (128,)).astype(np.float32), 64),
             (np.concatenate([rng.normal(0, 0.01, 63), [0.5]]).astype(np.float32), 64),  # one outlier sets the scale
             (rng.uniform(-1, 1, (3, 32)).astype(np.float32), 32),
             (np.linspace(-2, 0, 64, dtype=np.float32), 64)]                                # all negative

    def same(g, w):
        g = np.asarray(g, dtype=float)
        return g.shape == w.shape and np.allclose(g, w, atol=1e-6)

    return _report("NF4 round trip", fn, cases, nf4_roundtrip_reference, same,
                   "per block: absmax = max |w|; scaled = w / absmax lies in [-1, 1]; take the NF4 level nearest to "
                   "each scaled weight (not a uniform 16-step grid) and multiply back by absmax")


# -- 07: judging a box experiment honestly --------------------------------------------------------------------------
def box_lift_reference(name: str, unsteered, steered) -> tuple[float, float, float]:
    """(mention rate unsteered, mention rate steered, lift = steered / unsteered; NaN when unsteered is 0): a
    mention is the name as whole words, singular or plural (`gazekit.evaluate.mentions`)."""
    from gazekit.evaluate import mentions

    base = float(np.mean([mentions(t, name) for t in unsteered]))
    rate = float(np.mean([mentions(t, name) for t in steered]))
    return base, rate, (rate / base) if base else float("nan")


def check_box_lift(fn: Callable) -> bool:
    """Exercise 07: `fn(name, unsteered_answers, steered_answers) -> (rate_unsteered, rate_steered, lift)`."""
    cases = [("dog", ["a dog on grass", "a park", "grass"], ["two dogs", "a dog", "a tree"]),
             ("cat", ["a catalogue", "the cat", "cats"], ["a cat", "a cat", "educated"]),   # whole words only
             ("sun", ["sky", "sky"], ["sun", "sunny sky"]),                                 # unsteered 0 -> NaN lift
             ("bus", ["buses", "a bus"], ["a bus", "trees"])]                               # steering can lower it

    def same(g, w):
        return len(g) == 3 and all(np.isclose(float(a), b, atol=1e-9, equal_nan=True) for a, b in zip(g, w))

    return _report("box lift", fn, cases, box_lift_reference, same,
                   "count whole-word mentions (gazekit.evaluate.mentions), not substrings ('cat' is not in "
                   "'catalogue'); lift = steered rate / unsteered rate, NaN (not inf) when the unsteered rate is 0")


def box_iou_reference(a, b) -> float:
    """Intersection over union of two pixel boxes (x0, y0, x1, y1), right/bottom edges exclusive (a box 0..10 is 10
    pixels wide); 0 when they do not overlap."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def check_box_iou(fn: Callable) -> bool:
    """Exercise 07b: `fn(box_a, box_b) -> float`, intersection over union of two (x0, y0, x1, y1) boxes."""
    cases = [((0, 0, 10, 10), (0, 0, 10, 10)), ((0, 0, 10, 10), (5, 0, 15, 10)), ((0, 0, 10, 10), (10, 0, 20, 10)),
             ((0, 0, 128, 128), (256, 0, 384, 128)), ((0, 0, 100, 50), (25, 10, 50, 40)),
             ((10, 10, 30, 40), (0, 20, 20, 60))]
    return _report("box IoU", fn, cases, box_iou_reference, lambda g, w: np.isclose(float(g), w, atol=1e-9),
                   "intersection = overlap width x overlap height, each clipped at 0; union = area a + area b - "
                   "intersection; boxes that only touch share no pixels (width = x1 - x0, no +1)")



# -- 08: comparing models of different sizes fairly ---------------------------------------------------------------
def gaze_profile_reference(scores, k: int) -> tuple[float, float]:
    """(share of all heads scoring >= 0.5, mean relative depth of the top-k heads): the two size-free numbers of a
    survey row (`gazekit.survey`: ``score.share_ge`` and ``top_depth_mean``). Relative depth = layer / (L - 1), 0 for
    the first layer and 1 for the last (0 when L = 1); the top k break ties by (layer, head), as
    `GazeScores.ranking` does."""
    g = np.asarray(scores, dtype=float)
    L, H = g.shape
    top = np.argsort(-g.ravel(), kind="stable")[:k]
    return float((g >= 0.5).mean()), float(np.mean([(i // H) / max(L - 1, 1) for i in top]))


def _profile_scores(seed: int, L: int, H: int, n_gaze: int) -> np.ndarray:
    """Low scores everywhere, `n_gaze` high ones in the later layers, one head exactly at 0.5."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0, 0.3, size=(L, H))
    layers = rng.integers(L // 2, L, size=n_gaze)
    g[layers, rng.integers(0, H, size=n_gaze)] = rng.uniform(0.6, 0.99, size=n_gaze)
    g[rng.integers(0, L), rng.integers(0, H)] = 0.5  # on the threshold: it counts
    return g


def check_gaze_profile(fn: Callable) -> bool:
    """Exercise 08: `fn(scores [L, H], k) -> (share of heads >= 0.5, mean relative depth of the top-k heads)`."""
    cases = [(_profile_scores(0, 3, 16, 8), 7),     # organism-sized: 3 layers x 16 heads
             (_profile_scores(1, 28, 12, 20), 29),  # a 2B-sized model: 28 x 12 heads
             (_profile_scores(2, 36, 32, 90), 100),  # Qwen3-VL-8B-sized: 36 x 32 heads, the paper's K = 100
             (np.array([[0.5, 0.2, 0.9], [0.9, 0.1, 0.4]]), 1)]  # a tie at the top: the earlier layer first

    def same(g, w):
        return len(g) == 2 and all(np.isclose(float(a), b, atol=1e-9) for a, b in zip(g, w))

    return _report("gaze profile", fn, cases, gaze_profile_reference, same,
                   "compare models by shares, not counts: (scores >= 0.5).mean() (a head at exactly 0.5 counts); "
                   "rank with np.argsort(-scores.ravel(), kind='stable'), head index i sits in layer i // H, and "
                   "its relative depth is layer / (L - 1), so the last layer is 1")


# notebook -> the checks its exercises use (docs/teaching.md lists them with the skills they train)
EXERCISES = {"01": ["check_panel_tokens", "check_panel_attention"], "02": ["check_gaze_scores", "check_ranking"],
             "03": ["check_staircase_break", "check_value_weighted"],
             "04": ["check_bias_row", "check_fair_control", "check_mean_ablation"],
             "05": ["check_schedule", "check_schedule_from_captions"],
             "06": ["check_ranking_agreement", "check_nf4_roundtrip"], "07": ["check_box_lift", "check_box_iou"],
             "08": ["check_gaze_profile"]}
