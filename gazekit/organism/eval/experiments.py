"""Organism experiments behind `frozen_encoder.json`, `qwen_attempts.json` and `survey_extra.json` (a script, not
part of the package API).

    python gazekit/organism/eval/experiments.py run NAME [--steps N] [--family llava|qwen2_vl] [--arch JSON]
        [--freeze-vision] [--vision-init random|DIR] [--max-pixels N] [--quick] [--root DIR]
    python gazekit/organism/eval/experiments.py measure NAME --weights DIR [--quick]   # no training
    python gazekit/organism/eval/experiments.py collect                               # -> survey_extra.json

`run` trains with `gazekit.organism.train.train` (one thread, seed 0) into ROOT/NAME (default /tmp/jorg_runs; kept
if it already holds weights) and measures it; every number is written to eval/results/NAME.json.

Measures (held-out splits of `gazekit.organism.evaluate`: discovery seed 100, validation seed 1000, test seed 2000):
  full  -- K chosen on 100 validation strips (`evaluate.choose_k`, K <= 15% of heads); on 200 test strips: per-panel
           QA, panel-by-panel narration, `gazekit.evaluate.vqa` and `narration` (exact judge; unsteered, top-K,
           3 size-matched random draws from the below-median pool, all heads), and the dynamic schedule's Spearman.
  quick -- for exploring variants: per-panel QA on 50 test strips, discovery on 50 strips, VQA at K = 7 (15% of 48)
           on 50 test strips (unsteered, top-K, one random draw).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def gaze_summary(scores) -> dict:
    """Score distribution of a `GazeScores`: quantiles, heads >= 0.5 (count, share, per layer), the top heads."""
    g = scores.scores
    L = g.shape[0]
    return {"n_heads": int(g.size), "n_layers": int(L), "n_ge_0.5": int((g >= 0.5).sum()),
            "share_ge_0.5": float((g >= 0.5).mean()), "n_ge_0.8": int((g >= 0.8).sum()),
            "max": float(g.max()), "median": float(np.median(g)),
            "quantiles": {str(q): float(np.quantile(g, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)},
            "ge_0.5_per_layer": [int((g[i] >= 0.5).sum()) for i in range(L)],
            "top": [[h.layer, h.head, round(float(g[h]), 3)] for h in scores.top(8)],
            "top_relative_depth": [round(h.layer / max(L - 1, 1), 3) for h in scores.top(8)]}


def _row(summary, cond, nondefault=True) -> dict:
    r = summary[summary["condition"] == cond]
    if r.empty:
        return None
    r = r.iloc[0]
    s = "_nondefault" if nondefault else ""
    return {"mean": float(r["accuracy" + s]), "low": float(r["ci_low" + s]), "high": float(r["ci_high" + s]),
            "n": int(r["n" + s])}


def steering_block(res) -> dict:
    """One static protocol's Results -> top / random / all success on non-default pairs and unsteered on all pairs
    (95% bootstrap CIs), with the junk shares."""
    s = res.summary()
    out = {c: _row(s, c) for c in ("top", "random", "all")}
    out["unsteered_all_pairs"] = _row(s, "unsteered", nondefault=False)
    out["top_all_pairs"] = _row(s, "top", nondefault=False)
    for c in ("top", "random", "all"):
        r = s[s["condition"] == c]
        if not r.empty and "junk_rate" in r:
            out[f"{c}_junk_rate"] = float(r["junk_rate"].iloc[0])
    return out


def measure(vlm, quick: bool) -> dict:
    """Every number of one model (see the module docstring)."""
    import gazekit
    import gazekit.organism.evaluate as E
    from gazekit.comics import synthetic
    t0 = time.time()
    out = {"quick": quick}
    if quick:
        scores = gazekit.discover(vlm, synthetic(50, seed=E.DISCOVERY_SEED), progress=False)
        test = synthetic(50, seed=E.TEST_SEED)
        K = max(1, int(np.floor(E.MAX_K_FRACTION * scores.scores.size)))
        out["K"] = K
        out["K_rule"] = "floor(15% of heads) (quick measure: no validation sweep)"
    else:
        scores = E.discovery_scores(vlm)
        ck = E.choose_k(vlm, scores, n_val=100, verbose=False)
        K = ck["recommended_k"]
        out["K"], out["k_sweep"] = K, ck["sweep"]
        out["K_rule"] = "evaluate.choose_k on synthetic(100, seed=1000): best mean(VQA, narration), K <= 15%"
        test = synthetic(200, seed=E.TEST_SEED)
    out["n_test_strips"] = len(test)
    out["gaze"] = gaze_summary(scores)
    out["K_share"] = K / scores.scores.size
    tasks = E.task_accuracy(vlm, test)
    out["panel_qa"] = tasks["panel_qa"]
    out["panel_by_panel_exact"] = tasks["panel_by_panel_exact"]
    out["example_panel_by_panel"] = tasks["example_panel_by_panel"]
    vqa = E.static_steering(vlm, test, scores, "vqa", K, n_random_sets=1 if quick else 3)
    out["vqa"] = steering_block(vqa)
    out["vqa"]["default_is_cued_panel"] = E.cued_accuracy(vqa, test, lambda s: s.main_panel)
    if not quick:
        nar = E.static_steering(vlm, test, scores, "narration", K)
        out["narration"] = steering_block(nar)
        d = E.dynamic_numbers(vlm, test, scores, K)
        out["dynamic"] = {k: d[k] for k in ("spearman", "spearman_ci", "n_strips", "spearman_pooled",
                                            "spearman_unsteered_vs_schedule")}
    out["eval_seconds"] = round(time.time() - t0, 1)
    return out


def _short(res: dict) -> str:
    v = res["vqa"]
    f = lambda c: "—" if c is None else f"{100 * c['mean']:.1f}%"  # noqa: E731
    return (f"QA {f(res['panel_qa'])} | heads>=0.5 {res['gaze']['n_ge_0.5']}/{res['gaze']['n_heads']} "
            f"per layer {res['gaze']['ge_0.5_per_layer']} max {res['gaze']['max']:.2f} | K={res['K']} VQA top "
            f"{f(v['top'])} random {f(v['random'])} all {f(v['all'])} unsteered(all pairs) "
            f"{f(v['unsteered_all_pairs'])}")


def main(argv=None):
    """Command line: `run NAME` (train + measure), `measure NAME --weights DIR`, or `collect` (results -> JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("run", "measure", "collect"))
    ap.add_argument("name", nargs="?")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--family", default="llava")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--mix", default=None, help="JSON task mix")
    ap.add_argument("--freeze-vision", action="store_true")
    ap.add_argument("--vision-init", default="random")
    ap.add_argument("--max-pixels", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--root", default="/tmp/jorg_runs")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    if a.cmd == "collect":
        return collect()
    import torch
    torch.set_num_threads(1)
    from gazekit.organism.evaluate import load_vlm
    rec = {"name": a.name, "command": "python gazekit/organism/eval/experiments.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "note": a.note}
    if a.cmd == "run":
        from gazekit.organism.train import train
        out = os.path.join(a.root, a.name)
        if not os.path.exists(os.path.join(out, "training_info.json")):
            train(out, steps=a.steps, family=a.family, arch=json.loads(a.arch) if a.arch else None,
                  mix=json.loads(a.mix) if a.mix else None, freeze_vision=a.freeze_vision,
                  vision_init=a.vision_init, max_pixels=a.max_pixels, progress=False, log_every=250)
        weights = out
    else:
        weights = a.weights
    info_path = os.path.join(weights, "training_info.json")
    if os.path.exists(info_path):
        info = json.load(open(info_path))
        rec["training"] = {"steps": info["recipe"]["steps"], "train_seconds": info["train_seconds"],
                           "n_params": info["n_params"], "n_trainable": info.get("n_trainable", info["n_params"]),
                           "final_loss": info["log"][-1]["loss"], "recipe": info["recipe"],
                           "loss_log": [(r["step"], r["loss"]) for r in info["log"]]}
    vlm = load_vlm(weights)
    rec["family"] = vlm.family
    rec.update(measure(vlm, a.quick))
    with open(os.path.join(RESULTS, f"{a.name}.json"), "w") as f:
        json.dump(rec, f, indent=1, default=str)
    print(a.name, _short(rec), f"(train {rec.get('training', {}).get('train_seconds')} s, "
                                 f"eval {rec['eval_seconds']} s)", flush=True)


def collect():
    """eval/results/*.json -> eval/survey_extra.json: one entry per model label, the survey's numbers."""
    out = {}
    for fn in sorted(os.listdir(RESULTS)):
        if fn.endswith(".json"):
            r = json.load(open(os.path.join(RESULTS, fn)))
            out[r["name"]] = {k: r.get(k) for k in ("family", "note", "command", "quick", "K", "K_share", "K_rule",
                                                     "n_test_strips", "panel_qa", "panel_by_panel_exact", "gaze",
                                                     "vqa", "narration", "dynamic")}
            t = r.get("training") or {}
            out[r["name"]]["training"] = {k: t.get(k) for k in ("steps", "train_seconds", "n_params",
                                                                 "n_trainable", "final_loss")}
    with open(os.path.join(HERE, "survey_extra.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"{len(out)} models -> {os.path.join(HERE, 'survey_extra.json')}")
    groups = {"frozen_encoder.json": (FROZEN_NOTE, lambda n: n.startswith(("plain-", "frozen-"))),
              "qwen_attempts.json": (QWEN_NOTE, lambda n: n.startswith("qwen-"))}
    for fn, (note, pick) in groups.items():
        runs = {n: r for n, r in out.items() if pick(n)}
        if runs:
            with open(os.path.join(HERE, fn), "w") as f:
                json.dump({"experiment": note, "runs": runs}, f, indent=1)
            print(f"{len(runs)} runs -> {fn}")


FROZEN_NOTE = (
    "Frozen-encoder question on the LLaVA-class organism: the shipped recipe (seed 0, batch 32, lr 3e-3, cosine over "
    "the run's steps, one CPU thread) with the CLIP vision tower frozen (at its seeded random init, or copied from "
    "another organism) so that only the projector and the language model train, against a same-steps control with "
    "nothing frozen. Held-out splits of gazekit.organism.evaluate; exact caption judge; 95% bootstrap CIs. Each "
    "run's 'command' reproduces it (train + measure).")
QWEN_NOTE = (
    "Attempts at a Qwen2-VL-class organism (Qwen2VLForConditionalGeneration, the strip as ONE image, 24 merged "
    "image tokens): each a short run of the recipe with one change, measured quickly (per-panel QA on 50 test "
    "strips, discovery on 50 strips, VQA steering at K = 7 of 48 heads on 50 test strips) unless 'quick' is false. "
    "Each run's 'command' reproduces it.")


if __name__ == "__main__":
    main()
