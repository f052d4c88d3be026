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

__all__ = ["check_panel_tokens", "check_gaze_scores", "check_ranking", "check_staircase_break", "check_bias_row",
           "check_schedule", "check_ranking_agreement", "EXERCISES"]


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


# notebook -> the checks its exercises use (docs/teaching.md lists them with the skills they train)
EXERCISES = {"01": ["check_panel_tokens"], "02": ["check_gaze_scores", "check_ranking"],
             "03": ["check_staircase_break"], "04": ["check_bias_row"],
             "05": ["check_schedule"], "06": ["check_ranking_agreement"]}
