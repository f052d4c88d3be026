"""Do all VLMs have gaze heads? `survey` runs one small battery on several models and lays them side by side.

For each model (a loaded `gazekit.VLM`, or a name/id that `gazekit.load` understands):

1. discovery — `gazekit.discover` on the discovery strips: every head's gaze score;
2. the score distribution — quantiles 0.1 / 0.5 / 0.9, the maximum, and how many heads (count and share) score at
   least 0.5, the level where a head puts half its attention on the panel the question names;
3. where the top-K heads sit — relative depth layer / (n_layers - 1): 0 = first layer, 1 = last;
4. steering — `gazekit.evaluate.vqa` (the paper's VQA protocol, its judge, its size-matched random control drawn
   for `control_seeds` seeds, 95% bootstrap CIs) on a small held-out sample: unsteered, top-K gaze heads, random.

The paper (Gandikota & Bau 2026) finds gaze heads that steer in every family it tried from 2B to 32B, except
frozen-encoder designs (LLaVA, Bunny), whose best heads do not steer (Bunny 8.3% vs Ovis 68.7%).

Resumable: with ``out="runs/survey.jsonl"`` every generation, judgement, discovery and finished model is one line
of a `RunLog`; rerunning the same call recomputes nothing already there (a finished model given by name is not even
loaded), and a run killed mid-model resumes from its last logged answer.

>>> report = gazekit.survey(["organism", "organism-qwen"], gazekit.comics.synthetic(24, seed=100), n_eval=4,
...                         out="runs/survey.jsonl")                               # doctest: +SKIP
>>> report.table; report.plot(); report.save("runs/survey.json")                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gazekit.evaluate.runlog import RunLog, resume_key
from gazekit.regions import N_PANELS, VQA_QUESTION, Strip

__all__ = ["SurveyReport", "survey", "SURVEY_CONDITIONS", "GAZE_THRESHOLD", "SCORE_QUANTILES"]

SURVEY_CONDITIONS = ("unsteered", "top", "random")
GAZE_THRESHOLD = 0.5            # a head at or above it puts >= half its attention on the queried panel
SCORE_QUANTILES = (0.1, 0.5, 0.9)
FORMAT = "gazekit-survey/1"     # the saved JSON's format tag
ORGANISM_NAME = "organism"      # gazekit.load()'s default model, by name


# ---------------------------------------------------------------------------------------------------- input checks
def _is_vlm(m) -> bool:
    """A gazekit VLM, or a stand-in with what the protocols use (unit tests' fakes)."""
    return all(hasattr(m, a) for a in ("n_layers", "n_heads", "ask_batch"))


def _entries(models) -> list[tuple[str, object]]:
    """(label, VLM or name) per model: a VLM is labelled by its `.name`, a name by itself; a mapping gives labels."""
    if models is None:
        raise ValueError("survey needs at least one model: a list of gazekit VLMs (gazekit.load(...)) or names/ids "
                         "such as ['organism', 'Qwen/Qwen2-VL-2B-Instruct']")
    if isinstance(models, (str, Path)) or _is_vlm(models):
        models = [models]
    if isinstance(models, Mapping):
        pairs = [(str(k), v) for k, v in models.items()]
    else:
        try:
            items = list(models)
        except TypeError:
            raise TypeError(f"models must be a list of gazekit VLMs or model names/ids (or a dict label -> model), "
                            f"got {type(models).__name__}") from None
        pairs = [(None, m) for m in items]
    if not pairs:
        raise ValueError("survey needs at least one model: a list of gazekit VLMs (gazekit.load(...)) or names/ids "
                         "such as ['organism', 'Qwen/Qwen2-VL-2B-Instruct']; got an empty list")
    out = []
    for i, (label, m) in enumerate(pairs):
        if isinstance(m, Path):
            m = str(m)
        if isinstance(m, str):
            if not m.strip():
                raise ValueError(f"models[{i}] is an empty name; use e.g. 'organism' or a Hugging Face model id")
        elif not _is_vlm(m):
            raise TypeError(f"models[{i}] is a {type(m).__name__}: pass a gazekit VLM (gazekit.load(model, "
                            "processor) for a loaded Hugging Face model) or a model name/id such as 'organism'")
        out.append((label or (m if isinstance(m, str) else str(getattr(m, "name", type(m).__name__))), m))
    labels = [lab for lab, _ in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ValueError(f"two models share the label(s) {dup}: pass a dict {{label: model}} to tell them apart")
    names = [str(m.name) for _, m in out if not isinstance(m, str) and hasattr(m, "name")]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        # the protocols' logged answers are keyed by the model's name: two models of one name would share them
        raise ValueError(f"two loaded models are both named {dup}: give each its own name (vlm.name = '...') so "
                         "that their logged answers are kept apart")
    return out


def _check_strips(strips, what: str) -> list:
    if isinstance(strips, (str, bytes, Path)):
        raise TypeError(f"{what} must be a list of gazekit Strips, got the {type(strips).__name__} {strips!r}; "
                        "build them with gazekit.comics.synthetic(N, seed=...) (the command line's "
                        "'synthetic:N:SEED' specs go through gazekit.cli.parse_strips)")
    try:
        strips = list(strips)
    except TypeError:
        raise TypeError(f"{what} must be a list of gazekit Strips, got {type(strips).__name__}; build them with "
                        "gazekit.comics.synthetic(N, seed=...) or gazekit.Strip.from_panels") from None
    for i, s in enumerate(strips):
        if not isinstance(s, Strip):
            raise TypeError(f"{what}[{i}] is a {type(s).__name__}, not a gazekit Strip; build strips with "
                            "gazekit.comics.synthetic(N, seed=...) or gazekit.Strip.from_panels")
    return strips


def _resolve_k(k, vlm) -> int:
    """None: the protocols' default K for this model; an int; a float in (0, 1): that share of the model's heads."""
    from gazekit.evaluate.protocols import default_k
    total = int(vlm.n_layers) * int(vlm.n_heads)
    if k is not None and not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"k must be None, an int or a float share in (0, 1), got {type(k).__name__}")
    if k is None:
        kk = default_k(vlm)
    elif isinstance(k, bool):
        raise TypeError(f"k must be None, an int or a float share in (0, 1), got {k!r}")
    elif isinstance(k, float) and not float(k).is_integer():
        if not 0 < k < 1:
            raise ValueError(f"a float k is a share of each model's heads and must lie in (0, 1), got {k}")
        kk = max(1, round(k * total))
    else:
        kk = int(k)
    if not 1 <= kk <= total // 2:
        raise ValueError(f"K = {kk} heads, but {getattr(vlm, 'name', 'the model')} has {total} heads: the "
                         f"size-matched random control needs 1 <= K <= {total // 2} (half the heads); lower k")
    return kk


def _load(name: str, load_kwargs: dict):
    import gazekit
    # the embedded organism by name, also where gazekit.load has no registry of short names
    return gazekit.load(None if name == ORGANISM_NAME else name, **load_kwargs)


def _release(vlm):
    """Free a model the survey loaded itself before the next one loads (GPU memory)."""
    del vlm
    import gc
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory must never fail a survey
        pass


# ----------------------------------------------------------------------------------------------------- measuring
def score_summary(scores: np.ndarray, threshold: float = GAZE_THRESHOLD) -> dict:
    """The distribution of an [L, H] array of gaze scores: quantiles 0.1 / 0.5 / 0.9, max, heads >= `threshold`
    (count and share of all heads).

    Args:
        scores: gaze scores, one per (layer, head) (`GazeScores.scores`).
        threshold: the score a head needs to count (default 0.5)."""
    g = np.asarray(scores, dtype=float)
    g = g[np.isfinite(g)]
    if g.size == 0:
        raise ValueError("no finite gaze scores to summarise")
    out = {f"q{int(round(100 * q)):02d}": float(np.quantile(g, q)) for q in SCORE_QUANTILES}
    out.update({"max": float(g.max()), "n_ge": int((g >= threshold).sum()),
                "share_ge": float((g >= threshold).mean()), "threshold": float(threshold)})
    return out


def relative_depth(layer: int, n_layers: int) -> float:
    """layer / (n_layers - 1): 0 = the first language-model layer, 1 = the last (0 for a one-layer model).

    Args:
        layer: 0-based layer index.
        n_layers: the model's number of language-model layers."""
    if not 0 <= int(layer) < int(n_layers):
        raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")
    return float(layer) / max(int(n_layers) - 1, 1)


def _steering_block(res) -> dict:
    """Accuracy with 95% bootstrap CIs per condition from a vqa `Results` (all pairs, and non-default pairs)."""
    s = res.summary()
    out = {}
    for cond in SURVEY_CONDITIONS:
        r = s[s["condition"] == cond]
        if r.empty:
            continue
        r = r.iloc[0]

        def f(col):
            v = r.get(col)
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        out[cond] = {"accuracy": f("accuracy"), "ci_low": f("ci_low"), "ci_high": f("ci_high"), "n": int(r["n"]),
                     "accuracy_nondefault": f("accuracy_nondefault"), "ci_low_nondefault": f("ci_low_nondefault"),
                     "ci_high_nondefault": f("ci_high_nondefault"),
                     "junk_rate": f("junk_rate")}
    return out


# ------------------------------------------------------------------------------------------------------- report
# the columns of SurveyReport.table, in order, with the row field each comes from
_COLUMNS = [
    ("model", "model"), ("family", "family"), ("layers", "n_layers"), ("heads", "n_heads_total"), ("K", "k"),
    ("K share", "k_share"), ("score q10", "score.q10"), ("score median", "score.q50"), ("score q90", "score.q90"),
    ("score max", "score.max"), ("heads >= 0.5", "score.n_ge"), ("share >= 0.5", "score.share_ge"),
    ("top-K depth (mean)", "top_depth_mean"),
    ("unsteered", "steering.unsteered.accuracy"), ("unsteered lo", "steering.unsteered.ci_low"),
    ("unsteered hi", "steering.unsteered.ci_high"),
    ("top-K", "steering.top.accuracy"), ("top-K lo", "steering.top.ci_low"), ("top-K hi", "steering.top.ci_high"),
    ("random", "steering.random.accuracy"), ("random lo", "steering.random.ci_low"),
    ("random hi", "steering.random.ci_high"), ("pairs", "steering.top.n"),
]


def _get(row: dict, path: str):
    v = row
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v


@dataclass
class SurveyReport:
    """What `survey` measured: one entry per model in `rows` (JSON-able dicts), the run's settings in `config`.

    `table`: one row per model (a pandas DataFrame): family, layers, heads, K, the score distribution, the top-K
    heads' mean relative depth, and VQA steering accuracy (all (strip, target) pairs) with 95% bootstrap CIs for
    unsteered, top-K and the size-matched random control. `plot()`: one figure comparing the models. `save(path)`:
    JSON; `SurveyReport.load(path)` reads it back."""

    rows: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """The models' labels, in survey order."""
        return [r["model"] for r in self.rows]

    def __getitem__(self, label: str) -> dict:
        for r in self.rows:
            if r["model"] == label:
                return r
        raise KeyError(f"no model {label!r} in this survey; it has {self.models}")

    @property
    def table(self):
        """One row per model (pandas DataFrame; see the class docstring for the columns)."""
        import pandas as pd
        return pd.DataFrame([{name: _get(r, path) for name, path in _COLUMNS} for r in self.rows],
                            columns=[name for name, _ in _COLUMNS])

    def plot(self, fig=None):
        """One figure comparing the models: (a) every head's gaze score per model, with the 0.5 line; (b) the
        relative depth of each model's top-K heads; (c) VQA steering accuracy — unsteered, top-K gaze heads and
        the size-matched random control — with 95% bootstrap CI error bars and the 1/6 chance line. Returns the
        matplotlib Figure."""
        from gazekit.evaluate.plotting import plot_survey
        return plot_survey(self, fig=fig)

    def save(self, path) -> Path:
        """Write the report as JSON at `path` (folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": FORMAT, "config": self.config, "models": self.rows}, indent=1,
                                   default=str))
        return path

    @classmethod
    def load(cls, path) -> "SurveyReport":
        """Read a report written by `save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no survey at {path}; write one with gazekit.survey(...).save(path)")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a gazekit survey (expected the format tag {FORMAT!r})")
        return cls(rows=list(data["models"]), config=dict(data.get("config", {})))

    def to_markdown(self) -> str:
        """The headline columns as a Markdown table (accuracies as % [95% CI])."""
        def pct(r, cond):
            s = _get(r, f"steering.{cond}")
            if not s or s.get("accuracy") is None:
                return "-"
            return f"{100 * s['accuracy']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"
        lines = ["| model | heads | K | median score | max score | heads >= 0.5 | top-K depth | unsteered | "
                 "top-K | random (size-matched) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            sc = r["score"]
            lines.append(f"| {r['model']} | {r['n_heads_total']} | {r['k']} | {sc['q50']:.3f} | {sc['max']:.3f} | "
                         f"{sc['n_ge']} ({100 * sc['share_ge']:.1f}%) | {r['top_depth_mean']:.2f} | "
                         f"{pct(r, 'unsteered')} | {pct(r, 'top')} | {pct(r, 'random')} |")
        c = self.config
        lines += ["", f"(VQA steering on {c.get('n_eval')} held-out strips x 6 targets; judge: {c.get('judge')}; "
                      f"random control: {c.get('control_seeds')} draws per model; discovery on "
                      f"{c.get('n_discovery')} strips)"]
        return "\n".join(lines)

    def __repr__(self):
        if not self.rows:
            return "SurveyReport(no models)"
        cols = ["model", "heads", "K", "score median", "heads >= 0.5", "top-K depth (mean)", "unsteered", "top-K",
                "random"]
        return f"SurveyReport({len(self.rows)} models)\n" + self.table[cols].to_string(index=False,
                                                                                         float_format="%.3f")


# ------------------------------------------------------------------------------------------------------- survey
def survey(models, strips: Sequence[Strip], *, k=None, n_eval: int = 4, eval_strips: Optional[Sequence[Strip]] = None,
           judge=None, max_new_tokens: int = 15, seed: int = 0, control_seeds: int = 3, progress: bool = True,
           out=None, batch_size: Optional[int] = None, load_kwargs: Optional[dict] = None) -> SurveyReport:
    """Compare models: gaze-score distribution, where the top-K heads sit, and top-K VQA steering against the
    size-matched random control and the unsteered answer.

    Args:
        models: gazekit VLMs and/or names/ids for `gazekit.load` ("organism" = the embedded comic organism, a
            Hugging Face id or a local folder), or a dict {label: model}. A VLM is labelled by its `.name`, a name
            by itself. Models given by name are loaded one at a time and freed after their turn.
        strips: gazekit `Strip`s for discovery (e.g. `gazekit.comics.synthetic(24, seed=100)`). Unless
            `eval_strips` is given, the last `n_eval` of them are held out for steering and the rest discover.
        k: heads to steer: None (each model's `gazekit.evaluate.default_k`: its recommended K, else 100 of every
            1152 heads as in the paper), an int, or a float in (0, 1): that share of each model's heads.
        n_eval: strips in the steering sample (each steered toward all six panels: 6 x n_eval pairs per condition).
        eval_strips: strips for steering (the first `n_eval` are used); default: held out from `strips`.
        judge: the protocols' judge (a name such as "exact" or "caption", a callable, or None: their default).
        max_new_tokens: tokens per steered answer (the paper's VQA: 15).
        seed: first seed of the random control's draws and of the bootstrap.
        control_seeds: draws of the random control (seed, seed + 1, ...), each K heads from the below-median pool.
        progress: tqdm progress bars (over models, and inside discovery and steering).
        out: a JSONL path (or `RunLog`) recording every step; a rerun with the same `out` recomputes nothing done.
        batch_size: rows per generate call, passed to `gazekit.evaluate.vqa` (None: its default).
        load_kwargs: keyword arguments for `gazekit.load` of models given by name (e.g. {"quantize": "4bit"}).

    Returns:
        a `SurveyReport`.

    Raises:
        ValueError: no models, too few strips, n_eval < 1, K impossible for a model, duplicate labels.
        TypeError: models or strips of the wrong type."""
    from gazekit.evaluate.protocols import _item_id, _open_log, vqa
    from gazekit.judges import get_judge

    entries = _entries(models)
    strips = _check_strips(strips, "strips")
    if isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer)) or n_eval < 1:
        raise ValueError(f"n_eval must be an integer >= 1 (strips in the steering sample), got {n_eval!r}")
    n_eval = int(n_eval)
    if eval_strips is None:
        if len(strips) <= n_eval:
            raise ValueError(f"{len(strips)} strips cannot hold out n_eval = {n_eval} for steering and keep some for "
                             f"discovery: pass more strips (e.g. gazekit.comics.synthetic({n_eval + 20}, seed=100)), "
                             "a smaller n_eval, or eval_strips=")
        discovery, evaluation = strips[:-n_eval], strips[-n_eval:]
    else:
        if not strips:
            raise ValueError("survey needs at least one discovery strip, e.g. gazekit.comics.synthetic(20, seed=100)")
        evaluation = _check_strips(eval_strips, "eval_strips")
        if len(evaluation) < n_eval:
            raise ValueError(f"eval_strips holds {len(evaluation)} strips, fewer than n_eval = {n_eval}")
        discovery, evaluation = strips, evaluation[:n_eval]
    for _, m in entries:  # a K a loaded model cannot take fails now, not after the other models' runs
        if not isinstance(m, str):
            _resolve_k(k, m)
    if isinstance(control_seeds, bool) or int(control_seeds) < 1:
        raise ValueError(f"control_seeds must be >= 1 (draws of the random control), got {control_seeds!r}")
    disc_ids = [_item_id(s) for s in discovery]
    eval_ids = [_item_id(s) for s in evaluation]
    shared = set(disc_ids) & set(eval_ids)
    if shared:
        warnings.warn(f"{len(shared)} steering strip(s) are also discovery strips: the steering sample is not held "
                      "out", UserWarning, stacklevel=2)
    judge_obj = get_judge(judge, evaluation)
    judge_name = getattr(judge_obj, "name", type(judge_obj).__name__)
    load_kwargs = dict(load_kwargs or {})
    config = {"n_discovery": len(discovery), "n_eval": len(evaluation), "k": k, "judge": judge_name,
              "max_new_tokens": int(max_new_tokens), "seed": int(seed), "control_seeds": int(control_seeds),
              "conditions": list(SURVEY_CONDITIONS), "question": VQA_QUESTION, "mode": "boost_suppress",
              "strength": 1e4, "threshold": GAZE_THRESHOLD, "discovery_strips": disc_ids, "eval_strips": eval_ids,
              "log": None if out is None or isinstance(out, RunLog) else str(out)}
    # what a model's finished row depends on (its label and name added per model): a change recomputes
    spec = {k_: config[k_] for k_ in ("k", "judge", "max_new_tokens", "seed", "control_seeds", "question", "mode",
                                      "strength", "discovery_strips", "eval_strips")}
    own_log = not isinstance(out, RunLog)
    log = _open_log(out)
    from tqdm.auto import tqdm
    rows = []
    try:
        with tqdm(total=len(entries), desc="survey", unit="model", disable=not progress) as bar:
            for label, model in entries:
                bar.set_postfix_str(label)
                ident = model if isinstance(model, str) else str(getattr(model, "name", label))
                key = resume_key("survey", label, model=ident, **spec)
                if log.done(key):
                    rows.append(log.get(key)["result"])
                    bar.update(1)
                    continue
                loaded = isinstance(model, str)
                vlm = _load(model, load_kwargs) if loaded else model
                try:
                    row = _survey_one(vlm, label, ident, discovery, evaluation, disc_ids, log, k=k, judge=judge_obj,
                                      max_new_tokens=max_new_tokens, seed=seed, control_seeds=control_seeds,
                                      progress=progress, batch_size=batch_size, vqa=vqa)
                finally:
                    if loaded:
                        _release(vlm)
                        vlm = None
                log.append({"key": key, "kind": "survey", "model": label, "result": row})
                rows.append(row)
                bar.update(1)
    finally:
        if own_log:
            log.close()
    return SurveyReport(rows=rows, config=config)


def _survey_one(vlm, label, ident, discovery, evaluation, disc_ids, log, *, k, judge, max_new_tokens, seed,
                control_seeds, progress, batch_size, vqa) -> dict:
    """One model's row: discovery (logged, so a run killed while steering keeps it), distribution, depth, VQA."""
    from gazekit.discover import GazeScores, discover
    L, H = int(vlm.n_layers), int(vlm.n_heads)
    dkey = resume_key("survey-discovery", label, model=ident, strips=disc_ids)
    t0 = time.perf_counter()
    if log.done(dkey):
        d = log.get(dkey)
        scores = GazeScores(matrix=None, scores=np.asarray(d["scores"], dtype=float), model_name=d.get("name", ""),
                            n_strips=int(d["n_strips"]))
        if scores.scores.shape != (L, H):
            raise ValueError(f"the logged discovery of {label!r} has {scores.scores.shape} heads but the model has "
                             f"{(L, H)}: this log belongs to another model; use another out=")
        t_disc = float(d.get("seconds", 0.0))
    else:
        scores = discover(vlm, discovery, progress=progress)
        t_disc = time.perf_counter() - t0
        log.append({"key": dkey, "kind": "discovery", "model": label, "name": str(getattr(vlm, "name", "")),
                    "n_strips": len(discovery), "scores": scores.scores.tolist(), "seconds": round(t_disc, 3)})
    kk = _resolve_k(k, vlm)
    top = scores.top(kk)
    depths = [relative_depth(h.layer, L) for h in top]
    t1 = time.perf_counter()
    res = vqa(vlm, evaluation, scores, k=kk, conditions=SURVEY_CONDITIONS, judge=judge, log=log,
              max_new_tokens=max_new_tokens, seed=seed, control_seeds=control_seeds, progress=progress,
              batch_size=batch_size)
    t_steer = time.perf_counter() - t1
    per_seed = res.controls.get(f"k{kk}", {})
    return {
        "model": label, "name": str(getattr(vlm, "name", label)), "family": str(getattr(vlm, "family", "")),
        "n_layers": L, "n_heads": H, "n_heads_total": L * H, "k": kk, "k_share": kk / (L * H),
        "n_discovery": len(discovery), "n_eval": len(evaluation),
        "score": score_summary(scores.scores),
        "scores": np.round(scores.scores, 5).tolist(),
        "top_heads": [{"layer": h.layer, "head": h.head, "score": float(scores.scores[h]),
                       "relative_depth": d} for h, d in zip(top, depths)],
        "top_depth_mean": float(np.mean(depths)), "top_depth_median": float(np.median(depths)),
        "steering": _steering_block(res),
        "random_control": {"pool": per_seed.get("pool"), "seeds": per_seed.get("seeds", []),
                           "per_seed": {str(s): v for s, v in per_seed.get("per_seed", {}).items()},
                           "sd": per_seed.get("std")},
        "chance": 1.0 / N_PANELS,
        "seconds": {"discovery": round(t_disc, 3), "steering": round(t_steer, 3)},
    }
