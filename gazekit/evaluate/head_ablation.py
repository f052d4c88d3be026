"""Ablation protocol: per-panel question accuracy with the top-K gaze heads ablated vs K random heads.

>>> res = gazekit.evaluate.ablation(vlm, strips, scores, how="mean", log="runs/ablation.jsonl")
>>> res.summary(); res.by_panel(); res.plot()

For every strip and every panel p = 1..6 the model answers the paper's discovery prompt for that panel
(`panel_question(p)`, the question gaze scores are measured with) under three conditions: ``unablated``; ``top``
— the top-K gaze heads ablated (`gazekit.ablate(vlm, scores.top(k), how)`); ``random`` — K heads drawn at random,
size-matched, from `scores.controls(k, pool, seed)` (default pool: heads scoring at or below the median, top K
excluded), once per draw (seeds seed .. seed + n_random - 1). The judge says which panel an answer describes
(default: the caption judge where strips have captions; pass judge="exact" for the embedded organism, whose answers
must be one caption exactly); a hit is a non-junk verdict naming panel p. Every generation and verdict is
appended to a `RunLog` (``log=path``) so a rerun resumes, and ``shard=(i, n)`` runs every n-th strip from i.
Returns a `Results` ("ablation"): accuracy per condition with 95% bootstrap CIs (`summary()`), per asked panel
(`by_panel()`), each random draw's accuracy (`controls`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from gazekit.evaluate.protocols import (Arm, Results, _control_config, _control_spread, _frame, _heads_json,
                                        _item_id, _k_rule, _open_log, _Runner, _tqdm, default_k)
from gazekit.evaluate.runlog import in_shard, parse_shard, resume_key
from gazekit.judges import get_judge
from gazekit.regions import N_PANELS, panel_question

__all__ = ["ABLATION_CONDITIONS", "ablation"]

ABLATION_CONDITIONS = ("unablated", "top", "random")


def _ablate(vlm, heads, *, how, region):
    """The real intervention (a seam: unit tests replace it to run the protocol on fake models)."""
    from gazekit.ablate import ablate
    return ablate(vlm, heads, how=how, region=region)


def ablation(vlm, strips, scores, *, k: Optional[int] = None, how: str = "mean", n_random: int = 3, judge=None,
             seed: int = 0, region=None, control_pool: str = "below-median", log=None, shard=None,
             max_new_tokens: int = 15, batch_size: Optional[int] = None, progress: bool = True,
             conditions: Sequence[str] = ABLATION_CONDITIONS) -> Results:
    """Per-panel question accuracy with the top-K gaze heads ablated, K random heads ablated, and neither.

    Args:
        vlm: a `gazekit.VLM`.
        strips: `Strip`s (six panels; with captions for the caption judges).
        scores: `GazeScores` (from `gazekit.discover`) ranking the heads.
        k: heads ablated per condition (default `default_k(vlm)`: the model's `recommended_k`, else 100 x heads /
            1152).
        how: "mean", "zero" or "uniform" (see `gazekit.ablate`).
        n_random: draws of the random control (seeds seed .. seed + n_random - 1), each K heads.
        judge: a judge name ("caption", "exact", "semantic", ...), a callable, or None (the caption judge when every
            strip has captions, else the semantic judge matched against the unablated answers).
        seed: the random controls' first seed and the bootstrap's.
        region: with how="uniform", the region the ablated heads attend to uniformly (None: the whole image).
        control_pool: the pool of `scores.controls` ("below-median", "image-matched", "reference").
        log: a JSONL path (or `RunLog`) recording every generation and verdict; a rerun resumes from it.
        shard: (i, n) to run every n-th strip from i.
        max_new_tokens: answer length cap.
        batch_size: strips answered per `ask_batch` call (None: as many as `BATCH_TOKENS` prompt tokens allow).
        progress: show a progress bar.
        conditions: any of ("unablated", "top", "random").

    Returns:
        `Results` ("ablation"): one row per (condition, draw, strip, asked panel); `summary()` gives accuracy per
        condition with 95% bootstrap CIs, `by_panel()` per asked panel, `controls` each random draw's accuracy."""
    from gazekit.ablate import HOWS
    from gazekit.discover import CONTROL_POOLS

    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    unknown = [c for c in conditions if c not in ABLATION_CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {ABLATION_CONDITIONS}")
    if control_pool not in CONTROL_POOLS:
        raise ValueError(f"control_pool must be one of {CONTROL_POOLS}, got {control_pool!r}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"n_random must be an int >= 1 (draws of the random control), got {n_random!r}")
    strips = list(strips)
    if not strips:
        raise ValueError("ablation needs at least one strip, e.g. gazekit.comics.synthetic(20, seed=0)")
    if scores is None and any(c in ("top", "random") for c in conditions):
        raise ValueError("the 'top' and 'random' conditions need gaze scores: run scores = gazekit.discover(vlm, "
                         "strips) first (or GazeScores.load('ranking.json'))")
    k = default_k(vlm) if k is None else int(k)
    shard = parse_shard(shard)
    judge = get_judge(judge, strips)
    log = _open_log(log)
    arms = [Arm("unablated", None, None)]  # always run: it defines the semantic judge's references
    if "top" in conditions:
        arms.append(Arm("top", k, tuple(tuple(h) for h in scores.top(k))))
    if "random" in conditions:
        for cs in range(seed, seed + n_random):
            c = scores.controls(k, pool=control_pool, seed=cs)
            arms.append(Arm("random", k, tuple(tuple(h) for h in c), getattr(c, "pool", control_pool), cs))
    mine = [(i, s) for i, s in enumerate(strips) if in_shard(i, shard)]
    pbar = _tqdm(len(mine) * N_PANELS * len(arms), "ablation", progress)
    run = _Runner(vlm, log, judge, mode=how, strength=0.0, phase="all", pbar=pbar,
                  intervention=lambda heads, target: _ablate(vlm, heads, how=how, region=region),
                  spec=lambda arm, target: {"heads": _heads_json(arm.heads), "how": how, "region": region})
    ids = {i: _item_id(s) for i, s in mine}
    metas = {i: {"protocol": "ablation", "strip": ids[i], "strip_index": i} for i, _ in mine}

    def gen_key(arm, i, p):
        parts = ["gen", "ablation", arm.condition] + ([f"k{arm.k}", f"seed{arm.control_seed}"]
                                                       if arm.condition == "random" else
                                                       [f"k{arm.k}"] if arm.k else [])
        spec = dict(model=run.model, prompt=panel_question(p), t=max_new_tokens)
        if arm.heads is not None:
            spec.update(heads=_heads_json(arm.heads), how=how, region=region)
        return resume_key(*parts, ids[i], f"p{p}", **spec)

    rows = []
    try:
        gens = {}
        for arm in arms:  # generation first: every strip of one (condition, panel) batched together
            for p in range(1, N_PANELS + 1):
                jobs = [(gen_key(arm, i, p), s, {**metas[i], "panel": p}, p) for i, s in mine]
                gens.update(run.generate_many(jobs, arm, panel_question(p), max_new_tokens, batch_size))
        base = arms[0]
        for i, strip in mine:
            refs = None
            if getattr(strip, "captions", None) is None and getattr(judge, "needs_references", False):
                refs = [gens[gen_key(base, i, p)]["answer"] for p in range(1, N_PANELS + 1)]
            for arm in arms:
                if arm.condition not in conditions:
                    continue
                for p in range(1, N_PANELS + 1):
                    key = gen_key(arm, i, p)
                    g = gens[key]
                    v = run.verdict(key, g["answer"], strip, refs, question=panel_question(p))
                    rows.append({"protocol": "ablation", "condition": arm.condition, "k": arm.k,
                                 "n_heads": arm.n_heads, "pool": arm.pool, "control_seed": arm.control_seed,
                                 "strip": ids[i], "strip_index": i, "target": p, "question": panel_question(p),
                                 "answer": g["answer"], "verdict_panel": v.panel, "junk": v.junk,
                                 "failed": v.failed, "reason": v.reason, "hit": v.hit(p),
                                 "judge": getattr(judge, "name", "custom"), "how": how if arm.heads else None,
                                 "heads": None if arm.heads is None else str(_heads_json(arm.heads)), "key": key})
    finally:
        pbar.close()
    cfg = {"model": run.model, "how": how, "region": region, "k": k, "k_rule": _k_rule(vlm, "gazekit"),
           "n_random": n_random, "judge": getattr(judge, "name", "custom"), "max_new_tokens": max_new_tokens,
           "seed": seed, "n_strips": len(mine), "shard": shard, "conditions": list(conditions),
           "questions": [panel_question(p) for p in range(1, N_PANELS + 1)],
           "log": None if log.path is None else str(log.path), **_control_config(arms)}
    res = Results("ablation", _frame(rows), cfg)
    res.controls = _control_spread(res.table, "hit")
    return res
