"""The paper's experiments as protocols: `vqa`, `narration`, `dynamic`, `k_sweep`, `boxes`.

Every protocol
- runs the conditions ("arms") the paper compares: ``unsteered``; ``top`` — the top-K gaze heads
  (`scores.top(k)`); ``random`` — K heads drawn at random, size-matched, from a pool named in every row and table
  (`scores.controls(k, pool, seed)`; default pool: the heads scoring at or below the median, top K excluded),
  once per control seed (``control_seeds``, default 3: seed, seed + 1, seed + 2; `Results.controls` has each
  seed's accuracy, their mean and spread); ``all`` — every head;
- steers every (strip, target panel) pair, asks the judge which panel each answer describes, and scores a hit only
  for a non-junk, non-failed verdict naming the target; for a target other than the default panel (the panel the
  unsteered answer describes) an answer with word-set Jaccard >= 0.85 to the unsteered one is a miss (the paper's
  baseline rule);
- ``preset="reference"`` runs the reference code's protocol instead (docs/reference-parity.md, step by step): its
  prompts, K = 100 (a model's stored `recommended_k` where it has one, e.g. the organism's 48 heads), its control
  sampler (`pool="reference"`, seed 42), decode-only dynamic steering, the Claude judge with the reference prompt
  (`ClaudeJudge(style="reference")`) unless a judge is given, the baseline-copy rule on every target with the
  reference's normalisation (copies are not sent to the judge), and the per-strip-mean Spearman. Results record
  the preset in `.config["preset"]`;
- appends every generation and judgement to a `RunLog` as it happens (pass ``log=path``) so a rerun resumes, and
  runs only its part of the strips with ``shard=(i, n)``;
- returns a `Results`: a tidy table (one row per scored item, with the intervention spec), accuracies with 95%
  bootstrap CIs per condition and per panel, `.plot()` and `.save()`.

The default judge is the caption matcher when every strip has captions, else the semantic judge matched against
the model's own unsteered answers to the six panel questions ("references", logged like any generation).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from gazekit.discover import CONTROL_POOLS
from gazekit.evaluate.runlog import RunLog, in_shard, parse_shard, resume_key
from gazekit.evaluate.stats import bootstrap_ci, spearman
from gazekit.judges import Verdict, get_judge, is_baseline_copy, words
from gazekit.regions import (N_PANELS, NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT, REFERENCE_DYNAMIC_PROMPT, VQA_QUESTION,
                             panel_question)
from gazekit.steer import RowTargets

__all__ = ["Results", "vqa", "narration", "dynamic", "k_sweep", "boxes", "CONDITIONS", "default_k", "default_ks", "mentions",
           "derangement", "BOX_PROMPT", "PRESETS", "reference_spearman", "Schedule"]

PRESETS = ("gazekit", "reference")
REFERENCE_SEED = 42  # the reference scripts' DEFAULT_SEED (control sampler, derangements, bootstrap)
REFERENCE_K = 100    # the reference scripts' --top-k-gaze / --top-k-random

CONDITIONS = ("unsteered", "top", "random", "all")
CHANCE = 1.0 / N_PANELS
BOX_PROMPT = "Describe this image briefly."
REFERENCE_TOKENS = 30  # new tokens for the model's own per-panel answers used as semantic-judge references
# Rows per generate call when `batch_size=None` (the default): prompt tokens per call, capped. Rows are (strip,
# target) pairs of one condition, each steered toward its own target. 16k tokens keep an 8B model's KV cache for
# one call near 2-3 GB; on the organism (CPU) 48-64 rows per call gave 6x the pairs/s of one at a time.
BATCH_TOKENS = 16384
MAX_BATCH_ROWS = 64
DEFAULT_BATCH_ROWS = 8  # for stand-ins without `prepare`


# ------------------------------------------------------------------------------------------------------ helpers
def _steer(vlm, heads, target, *, mode, strength, phase):
    """The real intervention (a seam: unit tests replace it to run protocols on fake models)."""
    from gazekit.steer import steer
    return steer(vlm, heads, target, mode=mode, strength=strength, phase=phase)


def default_k(vlm, scores=None, preset: str = "gazekit") -> int:
    """K when none is given: the model's stored `recommended_k` (the embedded organism has one), else the paper's
    K=100 of Qwen3-VL-8B's 1152 heads scaled to this model's head count (preset="gazekit") or K = 100 as the
    reference scripts use for every model (preset="reference"; at most half the model's heads)."""
    k = getattr(vlm, "recommended_k", None)
    if k:
        return int(k)
    total = int(vlm.n_layers) * int(vlm.n_heads)
    if _check_preset(preset) == "reference":
        return min(REFERENCE_K, total // 2)
    return max(1, round(total * 100 / 1152))


def _k_rule(vlm, preset) -> str:
    if getattr(vlm, "recommended_k", None):
        return "the model's recommended_k"
    return "K = 100 (the reference's)" if preset == "reference" else "100 x heads / 1152"


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return preset


def _preset_seed(seed, preset) -> int:
    return int(seed) if seed is not None else (REFERENCE_SEED if preset == "reference" else 0)


def _preset_judge(judge, preset):
    """The reference preset judges with Claude and the reference prompt unless a judge is given."""
    if judge is None and preset == "reference":
        from gazekit.judges import ClaudeJudge
        return ClaudeJudge(style="reference")
    return judge


def _item_id(obj) -> str:
    """Stable id of a strip/scene: its `id` attribute, else a hash of its pixels (and captions)."""
    sid = getattr(obj, "id", None)
    if sid is not None:
        return str(sid)
    h = hashlib.sha1(obj.image.tobytes())
    h.update(repr(obj.image.size).encode())
    h.update(json.dumps(getattr(obj, "captions", None)).encode())
    return "sha1:" + h.hexdigest()[:12]


def _spec_columns(arm, mode, strength) -> dict:
    """The intervention columns of a results row (None for the unsteered condition)."""
    steered = arm.heads is not None
    return {"mode": mode if steered else None, "strength": float(strength) if steered else None,
            "heads": json.dumps(_heads_json(arm.heads)) if steered else None}


def _heads_json(heads):
    return "all" if isinstance(heads, str) else [[int(h[0]), int(h[1])] for h in heads]


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of 1..n with no fixed point (rejection sampling; ~e tries on average)."""
    if n < 2:
        raise ValueError("a derangement needs n >= 2")
    while True:
        p = list(range(1, n + 1))
        rng.shuffle(p)
        if all(p[i] != i + 1 for i in range(n)):
            return p


@dataclass(frozen=True)
class Arm:
    """One condition: its name, K (None for unsteered/all) and the heads it steers."""

    condition: str
    k: Optional[int]
    heads: object  # list of (layer, head), "all" or None
    pool: Optional[str] = None          # random arms: the pool the heads were drawn from (ControlHeads.pool)
    control_seed: Optional[int] = None  # random arms: the seed of the draw

    @property
    def n_heads(self):
        """Heads this arm steers: 0 for none, "all", or the count."""
        if self.heads is None:
            return 0
        return "all" if isinstance(self.heads, str) else len(self.heads)


def _make_arms(vlm, scores, conditions, ks, seed, control_seeds: int = 3, pool: str = "below-median") -> list[Arm]:
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {CONDITIONS}")
    if scores is None and any(c in ("top", "random") for c in conditions):
        raise ValueError("the 'top' and 'random' conditions need gaze scores: run scores = gazekit.discover(vlm, "
                         "strips) first (or GazeScores.load('ranking.json'))")
    arms = []
    if "unsteered" in conditions:
        arms.append(Arm("unsteered", None, None))
    for k in ks:
        if "top" in conditions:
            arms.append(Arm("top", k, tuple(tuple(h) for h in scores.top(k))))
        if "random" in conditions:
            if control_seeds < 1:
                raise ValueError(f"control_seeds must be >= 1 (draws of the random control), got {control_seeds}")
            for cs in range(seed, seed + control_seeds):
                c = scores.controls(k, pool=pool, seed=cs)
                arms.append(Arm("random", k, tuple(tuple(h) for h in c), getattr(c, "pool", pool), cs))
    if "all" in conditions:
        arms.append(Arm("all", None, "all"))
    return arms


def _open_log(log) -> RunLog:
    if isinstance(log, RunLog):
        return log
    return RunLog(log)  # None → in memory


class _Runner:
    """Generation and judgement with logging and resume; shared by the protocols.

    `intervention(heads, target)` gives the context manager an arm runs under (default: steering with the
    runner's mode, strength and phase; `target` is a `RowTargets` for a batch); `spec(arm, target)`
    the intervention's description logged with each row (default: the steering spec)."""

    def __init__(self, vlm, log: RunLog, judge, *, mode, strength, phase, pbar, intervention=None, spec=None):
        self.vlm, self.log, self.judge = vlm, log, judge
        self.mode, self.strength, self.phase, self.pbar = mode, float(strength), phase, pbar
        self.model = getattr(vlm, "name", type(vlm).__name__)
        # kept as given, not as `intervention or self._steering`: a bound method stored on the runner would make a
        # reference cycle that keeps the run log (and its file lock) open after the protocol returns
        self._intervention = intervention
        self._spec = spec

    def intervention(self, heads, target):
        """The context manager an arm with `heads` runs under (steering toward `target`, or the given factory)."""
        if self._intervention is not None:
            return self._intervention(heads, target)
        return _steer(self.vlm, heads, target, mode=self.mode, strength=self.strength, phase=self.phase)

    def spec(self, arm: Arm, target):
        if arm.heads is None:
            return None
        if self._spec is not None:
            return self._spec(arm, target)
        return {"heads": _heads_json(arm.heads), "target": target, "mode": self.mode, "strength": self.strength,
                "phase": self.phase}

    def generate(self, key: str, item, prompt: str, arm: Arm, target, max_new_tokens: int, meta: dict,
                 steer_target=None) -> dict:
        """The logged generation row for `key`, generating it now if it is not in the log yet.

        `steer_target` (default `target`) is what is handed to steer() — a schedule callable for `dynamic`."""
        row = self.log.get(key)
        if row is not None and self.log.done(key):
            self.pbar.update(1)
            return row
        t0 = time.perf_counter()
        extra = {}
        if arm.heads is None and steer_target is None:
            answer = self.vlm.ask(item, prompt, max_new_tokens=max_new_tokens)
        else:
            st = target if steer_target is None else steer_target
            heads = [] if arm.heads is None else arm.heads if isinstance(arm.heads, str) else list(arm.heads)
            with contextlib.ExitStack() as stack:
                with warnings.catch_warnings():
                    # dynamic's unsteered arm steers no heads on purpose: its schedule only records the switches
                    warnings.filterwarnings("ignore", message="steer got no heads", category=UserWarning)
                    stack.enter_context(self.intervention(heads, st))
                answer = self.vlm.ask(item, prompt, max_new_tokens=max_new_tokens)
            if hasattr(st, "record"):
                extra["switches"] = st.record
        row = self._row(key, meta, arm, target, prompt, max_new_tokens, answer, time.perf_counter() - t0, extra)
        self.log.append(row)
        self.pbar.update(1)
        return row

    def _row(self, key, meta, arm, target, prompt, max_new_tokens, answer, seconds, extra=None) -> dict:
        return {"key": key, "kind": "generation", **meta, "condition": arm.condition, "k": arm.k,
                "n_heads": arm.n_heads, "pool": arm.pool, "control_seed": arm.control_seed, "target": target,
                "prompt": prompt, "max_new_tokens": max_new_tokens, "model": self.model, "answer": answer,
                "spec": self.spec(arm, target), "seconds": round(seconds, 4), **(extra or {})}

    def generate_many(self, jobs: list, arm: "Arm", prompt: str, max_new_tokens: int,
                      batch_size: Optional[int]) -> dict:
        """Generate (key, item, meta, target) jobs that share one condition and prompt, up to `batch_size` rows per
        `vlm.ask_batch` call (None: as many as fit `BATCH_TOKENS` prompt tokens, at most `MAX_BATCH_ROWS`) where the items share an image size (one token layout) — rows with different targets
        steered in the same call, each row toward its own (`RowTargets`); each answer is logged as soon as its
        batch returns. A batch the model cannot take as one (different layouts) is run item by item.
        Returns {key: row}."""
        out, todo = {}, []
        for key, item, meta, target in jobs:
            if self.log.done(key):
                out[key] = self.log.get(key)
                self.pbar.update(1)
            else:
                todo.append((key, item, meta, target))
        if todo and batch_size is None:
            batch_size = self._rows_per_call(todo[0][1], prompt)
        if not todo or batch_size <= 1 or not hasattr(self.vlm, "ask_batch"):
            for key, item, meta, target in todo:
                out[key] = self.generate(key, item, prompt, arm, target, max_new_tokens, meta)
            return out
        groups: dict = {}
        for job in todo:  # same image size → same token layout, so ask_batch can take them together
            groups.setdefault(getattr(job[1].image, "size", None), []).append(job)
        for group in groups.values():
            for c in range(0, len(group), batch_size):
                chunk = group[c:c + batch_size]
                if len(chunk) == 1:
                    key, item, meta, target = chunk[0]
                    out[key] = self.generate(key, item, prompt, arm, target, max_new_tokens, meta)
                    continue
                t0 = time.perf_counter()
                try:
                    answers = self._ask_batch([j[1] for j in chunk], prompt, arm, [j[3] for j in chunk],
                                              max_new_tokens)
                except ValueError:  # layouts differ after all: one at a time
                    for key, item, meta, target in chunk:
                        out[key] = self.generate(key, item, prompt, arm, target, max_new_tokens, meta)
                    continue
                per = (time.perf_counter() - t0) / len(chunk)
                for (key, item, meta, target), answer in zip(chunk, answers):
                    row = self._row(key, {**meta, "batch": len(chunk)}, arm, target, prompt, max_new_tokens,
                                    answer, per)
                    self.log.append(row)
                    self.pbar.update(1)
                    out[key] = row
        return out

    def _rows_per_call(self, item, prompt) -> int:
        """Rows per generate call when none is given: `BATCH_TOKENS` prompt tokens' worth (a 40-token organism
        prompt: `MAX_BATCH_ROWS`; a ~700-token strip prompt of a real model: 23 rows)."""
        if not hasattr(self.vlm, "prepare"):
            return DEFAULT_BATCH_ROWS
        n = self.vlm.prepare(item, prompt).prompt_len
        return max(1, min(MAX_BATCH_ROWS, BATCH_TOKENS // max(n, 1)))

    def _ask_batch(self, items, prompt, arm, targets, max_new_tokens):
        if arm.heads is None:
            return self.vlm.ask_batch(items, [prompt] * len(items), max_new_tokens=max_new_tokens)
        heads = arm.heads if isinstance(arm.heads, str) else list(arm.heads)
        with self.intervention(heads, RowTargets(targets)):
            return self.vlm.ask_batch(items, [prompt] * len(items), max_new_tokens=max_new_tokens)

    def verdict(self, gen_key: str, answer: str, item, references=None, suffix: str = "",
                question: Optional[str] = None, baseline: Optional[str] = None) -> Verdict:
        name = getattr(self.judge, "name", type(self.judge).__name__)
        key = resume_key("judge", name, gen_key + suffix)
        row = self.log.get(key)
        if row is not None and self.log.done(key):
            return Verdict.from_dict(row["verdict"])
        kw = {}
        if question is not None and getattr(self.judge, "accepts_question", False):
            kw["question"] = question  # LLM judges see the prompt answered
        if baseline is not None and getattr(self.judge, "accepts_baseline", False):
            kw["baseline"] = baseline  # the reference's Claude prompt shows the unsteered answer
        v = self.judge(answer, item, references, **kw)
        self.log.append({"key": key, "kind": "judgement", "gen_key": gen_key, "judge": name,
                         "answer": answer, "verdict": v.to_dict(), "failed": v.failed})
        return v


def _needs_references(judge, strip) -> bool:
    return getattr(strip, "captions", None) is None and getattr(judge, "needs_references", False)


def _ref_key(runner: "_Runner", sid: str, k: int) -> str:
    return resume_key("ref", sid, f"p{k}", model=runner.model, prompt=panel_question(k), tokens=REFERENCE_TOKENS)


def _references(runner: _Runner, strip, sid: str, meta: dict) -> Optional[list[str]]:
    """The model's own unsteered answers to the six panel questions (semantic judge on caption-less strips)."""
    refs = []
    for k in range(1, N_PANELS + 1):
        q = panel_question(k)
        key = _ref_key(runner, sid, k)
        row = runner.generate(key, strip, q, Arm("unsteered", None, None), k, REFERENCE_TOKENS,
                              {**meta, "role": "reference"})
        refs.append(row["answer"])
    return refs


def _tqdm(total, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="gen", disable=not progress, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class Results:
    """What a protocol measured.

    `table`: tidy DataFrame, one row per scored item (condition, k, strip, target, answer, verdict, hit, the
    intervention spec ...). `summary()` / `by_panel()`: accuracy (mean of `metric`) with 95% bootstrap CIs
    (10,000 resamples). `extra`: protocol-specific numbers (e.g. Spearman for `dynamic`). `controls`: the random
    control per K ("k7": its pool, seeds, each seed's accuracy — and Spearman for `dynamic` — their mean and sd)."""

    protocol: str
    table: "object"  # pandas.DataFrame
    config: dict = field(default_factory=dict)
    metric: str = "hit"
    extra: dict = field(default_factory=dict)
    group: tuple = ("condition", "k")
    controls: dict = field(default_factory=dict)

    def _groups(self, df, by):
        import pandas as pd
        # bootstraps are seconds each on thousands of pairs: remember them (keyed by the rows and grouping)
        cache = self.__dict__.setdefault("_ci_cache", {})
        ck = (tuple(by), tuple(df.index), id(self.table), len(self.table))
        if ck in cache:
            return cache[ck].copy()
        rows = []
        if df.empty:
            return pd.DataFrame(columns=[*by, "n", "accuracy", "ci_low", "ci_high"])
        for key, g in df.groupby(list(by), dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            vals = g[self.metric].astype(float).to_numpy()
            ci = bootstrap_ci(vals, seed=self.config.get("seed", 0))
            rows.append({**dict(zip(by, key)), "n": ci.n, "accuracy": ci.mean, "ci_low": ci.low, "ci_high": ci.high})
        cache[ck] = pd.DataFrame(rows)
        return cache[ck].copy()

    def summary(self, nondefault: Optional[bool] = None):
        """Accuracy per condition (and K): over all pairs, and over non-default pairs (target ≠ default panel),
        with junk and judge-failure rates."""
        import pandas as pd
        df = self.table
        if df.empty:
            return pd.DataFrame()
        by = [c for c in self.group if c in df.columns]
        allp = self._groups(df, by)
        if nondefault is True:
            return self._groups(df[df["nondefault"]], by) if "nondefault" in df else allp
        if "nondefault" in df.columns and nondefault is None:
            nd = self._groups(df[df["nondefault"]], by).rename(
                columns={"n": "n_nondefault", "accuracy": "accuracy_nondefault", "ci_low": "ci_low_nondefault",
                         "ci_high": "ci_high_nondefault"})
            allp = allp.merge(nd, on=by, how="left")
        for col, name in (("junk", "junk_rate"), ("failed", "judge_failures")):
            if col in df.columns:
                agg = df.groupby(by, dropna=False, sort=False)[col].agg("mean" if col == "junk" else "sum")
                allp = allp.merge(agg.rename(name).reset_index(), on=by, how="left")
        if "pool" in df.columns and df["pool"].notna().any():  # every table names the control's pool and draws
            pool = df.groupby(by, dropna=False, sort=False).agg(
                pool=("pool", "first"), n_draws=("control_seed", lambda x: int(x.nunique())))
            allp = allp.merge(pool.reset_index(), on=by, how="left")
        return allp

    def by_panel(self):
        """Accuracy per condition (and K) and target panel, with CIs."""
        df = self.table
        by = [c for c in self.group if c in df.columns] + ["target"]
        return self._groups(df, by)

    def accuracy(self, condition: str, k=None, nondefault: bool = False) -> float:
        """Mean of the table's metric for `condition` (and `k`; `nondefault`: only targets other than the default
        panel); NaN when no row matches."""
        df = self.table[self.table["condition"] == condition]
        if k is not None and "k" in df:
            df = df[df["k"] == k]
        if nondefault:
            df = df[df["nondefault"]]
        return float(df[self.metric].mean()) if len(df) else float("nan")

    def plot(self, ax=None, by: str = "condition"):
        """The paper's figure style: bars of accuracy per condition (or per `by="panel"`), 95% CI error bars,
        dashed chance line at 1/6 for panel protocols. Returns the matplotlib Axes."""
        from gazekit.evaluate.plotting import plot_results
        return plot_results(self, ax=ax, by=by)

    def save(self, out_dir, stem: Optional[str] = None) -> dict:
        """Write ``<stem>.csv`` (the table), ``<stem>_summary.csv``, ``<stem>_by_panel.csv`` (panel protocols),
        ``<stem>.png`` (the plot) and ``<stem>_config.json`` into `out_dir`; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.protocol
        paths = {"table": out / f"{stem}.csv", "summary": out / f"{stem}_summary.csv",
                 "config": out / f"{stem}_config.json", "plot": out / f"{stem}.png"}
        self.table.to_csv(paths["table"], index=False)
        self.summary().to_csv(paths["summary"], index=False)
        if "target" in self.table.columns and self.metric == "hit":
            paths["by_panel"] = out / f"{stem}_by_panel.csv"
            self.by_panel().to_csv(paths["by_panel"], index=False)
        paths["config"].write_text(json.dumps({"protocol": self.protocol, **self.config, "extra": self.extra,
                                               "controls": self.controls}, indent=1, default=str))
        import matplotlib
        import matplotlib.pyplot as plt
        if not self.table.empty:
            with matplotlib.rc_context({"figure.dpi": 120}):
                ax = self.plot()
                ax.figure.savefig(paths["plot"], bbox_inches="tight")
                plt.close(ax.figure)
        return paths

    def to_markdown(self) -> str:
        """The summary as a Markdown table (accuracy [95% CI])."""
        s = self.summary()
        lines = []
        import pandas as pd
        for _, r in s.iterrows():
            k = r.get("k")
            cond = str(r["condition"]) + (f" (K={int(k)})" if k is not None and not pd.isna(k) else "")
            if r["condition"] == "random" and self.config.get("control_pool"):
                cond += f", pool {self.config['control_pool']}, {len(self.config.get('control_seeds', []))} seeds"
            cell = f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
            nd = ""
            if "accuracy_nondefault" in r and r["accuracy_nondefault"] == r["accuracy_nondefault"]:
                nd = (f" | {100 * r['accuracy_nondefault']:.1f}% [{100 * r['ci_low_nondefault']:.1f}, "
                      f"{100 * r['ci_high_nondefault']:.1f}]")
            junk = f" | {100 * r['junk_rate']:.1f}%" if "junk_rate" in r else ""
            lines.append(f"| {cond} | {int(r['n'])} | {cell}{nd}{junk} |")
        head = "| condition | n | " + ("mention rate" if self.metric == "mentioned" else "accuracy") + " [95% CI]"
        sep = "|---|---|---"
        if "accuracy_nondefault" in s:
            head += " | non-default targets [95% CI]"
            sep += "|---"
        if "junk_rate" in s:
            head += " | junk"
            sep += "|---"
        notes = []
        for kk, c in self.controls.items():
            if not isinstance(c, dict) or "per_seed" not in c:
                continue
            per = ", ".join(f"{100 * v:.1f}%" for v in c["per_seed"].values())
            label = kk.replace("hit@", "").lstrip("k")
            notes.append(f"random control at K={label}: pool `{c['pool']}`, seeds {c['seeds']}: {per} "
                         f"(mean {100 * c['mean']:.1f}%, sd {100 * c['std']:.1f}) · preset "
                         f"`{self.config.get('preset', 'gazekit')}`")
        from gazekit.evaluate.plotting import provenance
        tail = ["", f"({provenance(self)})"]
        return "\n".join([head + " |", sep + "|", *lines] + ([""] + notes if notes else []) + tail)

    def __repr__(self):
        s = self.summary()
        return f"Results({self.protocol!r}, {len(self.table)} rows)\n" + (s.to_string(index=False) if len(s) else "")


def _frame(rows):
    import pandas as pd
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- static protocols
def _static(protocol, vlm, strips, scores, arms, *, prompt, judge, log, shard, max_new_tokens, seed, progress,
            mode, strength, phase, targets, batch_size=None, baseline_threshold=0.85, preset="gazekit") -> Results:
    strips = list(strips)
    if not strips:
        raise ValueError(f"{protocol} needs at least one strip, e.g. gazekit.comics.synthetic(20, seed=0)")
    shard = parse_shard(shard)
    judge = get_judge(judge, strips)
    log = _open_log(log)
    targets = list(targets)
    bad = [t for t in targets if not (isinstance(t, int) and 1 <= t <= N_PANELS)]
    if bad:
        raise ValueError(f"targets are 1-based panel numbers 1..{N_PANELS}, got {bad}")
    mine = [(i, s) for i, s in enumerate(strips) if in_shard(i, shard)]
    steered = [a for a in arms if a.heads is not None]
    per_strip = 1 + len(steered) * len(targets)
    per_strip += N_PANELS if any(_needs_references(judge, s) for _, s in mine) else 0
    pbar = _tqdm(len(mine) * per_strip, protocol, progress)
    run = _Runner(vlm, log, judge, mode=mode, strength=strength, phase=phase, pbar=pbar)
    unsteered_arm = Arm("unsteered", None, None)
    reference = preset == "reference"
    rows = []
    ids = {idx: _item_id(strip) for idx, strip in mine}
    metas = {idx: {"protocol": protocol, "strip": ids[idx], "strip_index": idx} for idx, _ in mine}

    def gen_key(arm, idx, t):
        if arm.heads is None:
            return resume_key("gen", protocol, "unsteered", ids[idx], model=run.model, prompt=prompt, t=max_new_tokens)
        return resume_key("gen", protocol, arm.condition, f"k{arm.k}", ids[idx], f"t{t}", model=run.model,
                          prompt=prompt, t=max_new_tokens, heads=_heads_json(arm.heads), mode=mode,
                          strength=float(strength), phase=phase)

    try:
        # generation first, condition by condition and target by target, batched across strips
        need_refs = [(i, s) for i, s in mine if _needs_references(judge, s)]
        refs = {}
        for k in range(1, N_PANELS + 1) if need_refs else ():
            q = panel_question(k)
            jobs = [(_ref_key(run, ids[i], k), s, {**metas[i], "role": "reference"}, k) for i, s in need_refs]
            got = run.generate_many(jobs, unsteered_arm, q, REFERENCE_TOKENS, batch_size)
            for (key, _, _, _), (i, _) in zip(jobs, need_refs):
                refs.setdefault(i, []).append(got[key]["answer"])
        gens = run.generate_many([(gen_key(unsteered_arm, i, None), s, metas[i], None) for i, s in mine],
                                 unsteered_arm, prompt, max_new_tokens, batch_size)
        for arm in arms:  # every (strip, target) pair of a condition, batched together: each row its own target
            if arm.heads is None:
                continue
            gens.update(run.generate_many([(gen_key(arm, i, t), s, metas[i], t) for t in targets for i, s in mine],
                                          arm, prompt, max_new_tokens, batch_size))
        # then judging, strip by strip (the unsteered answer first: it defines the default panel)
        for idx, strip in mine:
            sid, r = ids[idx], refs.get(idx)
            ukey = gen_key(unsteered_arm, idx, None)
            u = gens[ukey]
            # the reference shows its judge the unsteered answer, beside every steered one (not beside itself)
            uv = run.verdict(ukey, u["answer"], strip, r, question=prompt)
            default = uv.panel if not (uv.junk or uv.failed) else None
            for arm in arms:
                for t in targets:
                    nondefault = t != default
                    if arm.heads is None:
                        g, gkey = u, ukey
                    else:
                        gkey = gen_key(arm, idx, t)
                        g = gens[gkey]
                    if arm.heads is None:  # the baseline itself (the reference has no unsteered row to score)
                        copy = False
                    elif reference:  # the reference's rule: every target; a copy is a miss without a verdict
                        copy = is_baseline_copy(g["answer"], u["answer"], baseline_threshold, style="reference")
                    else:
                        copy = nondefault and is_baseline_copy(g["answer"], u["answer"], baseline_threshold)
                    if arm.heads is None:
                        v = uv
                    elif reference and copy:
                        v = None
                    else:
                        v = run.verdict(gkey, g["answer"], strip, r, question=prompt,
                                        baseline=u["answer"] if reference else None)
                    rows.append({
                        "protocol": protocol, "condition": arm.condition, "k": arm.k, "n_heads": arm.n_heads,
                        "pool": arm.pool, "control_seed": arm.control_seed, "strip": sid, "strip_index": idx,
                        "target": t,
                        "default_panel": default, "nondefault": nondefault, "answer": g["answer"],
                        "unsteered_answer": u["answer"], "verdict_panel": None if v is None else v.panel,
                        "junk": False if v is None else v.junk, "failed": False if v is None else v.failed,
                        "reason": "baseline copy: not judged (the reference's rule)" if v is None else v.reason,
                        "baseline_copy": copy, "hit": bool(v is not None and v.hit(t) and not copy),
                        "judge": getattr(judge, "name", "custom"),
                        **_spec_columns(arm, mode, strength),
                        "key": gkey})
    finally:
        pbar.close()
    cfg = {"model": run.model, "prompt": prompt, "max_new_tokens": max_new_tokens, "mode": mode,
           "strength": float(strength), "phase": phase, "seed": seed, "judge": getattr(judge, "name", "custom"),
           "n_strips": len(mine), "shard": shard, "targets": targets, "baseline_threshold": baseline_threshold,
           "baseline_rule": ("every target, reference normalisation" if reference else "non-default targets"),
           "conditions": [a.condition for a in arms], "log": None if log.path is None else str(log.path),
           **_control_config(arms), "preset": preset}
    res = Results(protocol, _frame(rows), cfg)
    res.controls = _control_spread(res.table, "hit")
    return res


def _control_config(arms) -> dict:
    rand = [a for a in arms if a.condition == "random"]
    return {"control_pool": rand[0].pool if rand else None,
            "control_seeds": sorted({a.control_seed for a in rand}) if rand else []}


def _control_spread(table, metric: str) -> dict:
    """The random control per K: each seed's mean `metric`, and the mean and standard deviation over seeds."""
    out = {}
    if table is None or len(table) == 0 or "control_seed" not in table.columns:
        return out
    rand = table[table["condition"] == "random"]
    for k, g in rand.groupby("k", sort=True):
        per = {int(cs): float(gs[metric].astype(float).mean()) for cs, gs in g.groupby("control_seed", sort=True)}
        vals = np.array(list(per.values()))
        out[f"k{int(k)}"] = {"pool": str(g["pool"].iloc[0]), "seeds": list(per), "per_seed": per,
                             "mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                             "n_seeds": len(vals)}
    return out


def vqa(vlm, strips, scores, *, k: Optional[int] = None, conditions: Sequence[str] = CONDITIONS, judge=None,
        log=None, shard=None, max_new_tokens: int = 15, seed: Optional[int] = None, progress: bool = True,
        mode: str = "boost_suppress", strength: float = 1e4, phase: str = "all",
        targets: Sequence[int] = range(1, N_PANELS + 1), question: str = VQA_QUESTION,
        batch_size: Optional[int] = None, preset: str = "gazekit", control_seeds: int = 3,
        control_pool: Optional[str] = None) -> Results:
    """VQA steering (the paper's main experiment): ask the whole-strip question with every panel as steering
    target, 15 new tokens, and measure how often the answer describes the target panel.

    vlm: a `gazekit.VLM`; strips: `Strip`s; scores: `GazeScores` (from `gazekit.discover`); k: number of heads
    (default `default_k(vlm)`); conditions: any of ("unsteered", "top", "random", "all"); judge: a name
    ("caption", "semantic", "claude", "openai"), a callable or None (default: see module doc); log: a JSONL path
    (or RunLog) to record and resume; shard: (i, n) to run every n-th strip from i; batch_size: (strip, target)
    rows of one image size and condition generated together per `vlm.ask_batch` call, each row steered toward its
    own target (None: as many as `BATCH_TOKENS` prompt tokens allow, at most `MAX_BATCH_ROWS`; 1 = one at a time;
    lower it if a GPU runs out of memory); seed: the random controls' first
    seed and the bootstrap's (default 0; 42 under the reference preset); control_seeds: draws of the random
    control (seed, seed + 1, ...); control_pool: the pool the random control is drawn from, "below-median",
    "image-matched" (heads that look at the image but do not follow the question: the fairer control) or
    "reference" (default: the preset's); preset: "gazekit" or "reference" (the reference code's protocol, see the
    module doc). Chance is 1/6. Returns `Results`."""
    return _static_protocol("vqa", vlm, strips, scores, [k], conditions, judge=judge, log=log, shard=shard,
                            max_new_tokens=max_new_tokens, seed=seed, progress=progress, mode=mode,
                            strength=strength, phase=phase, targets=targets, prompt=question, batch_size=batch_size,
                            preset=preset, control_seeds=control_seeds, control_pool=control_pool)


def _control_pool(preset: str, control_pool: Optional[str]) -> str:
    """The random control's pool: `control_pool` if given (any of `CONTROL_POOLS`: "below-median",
    "image-matched", "reference"), else the preset's ("reference" under preset="reference", else "below-median")."""
    if control_pool is None:
        return "reference" if preset == "reference" else "below-median"
    if control_pool not in CONTROL_POOLS:
        raise ValueError(f"control_pool must be one of {CONTROL_POOLS} or None (the preset's pool), got "
                         f"{control_pool!r}")
    return control_pool


def _static_protocol(protocol, vlm, strips, scores, ks, conditions, *, judge, seed, preset, control_seeds,
                     control_pool=None, **kw) -> Results:
    """vqa / narration / k_sweep: the preset's K, seed, control pool and judge, then `_static`."""
    _check_preset(preset)
    ks = [default_k(vlm, preset=preset) if k is None else int(k) for k in ks]
    seed = _preset_seed(seed, preset)
    arms = _make_arms(vlm, scores, conditions, ks, seed, control_seeds, _control_pool(preset, control_pool))
    res = _static(protocol, vlm, strips, scores, arms, judge=_preset_judge(judge, preset), seed=seed, preset=preset,
                  **kw)
    res.config["k_rule"] = _k_rule(vlm, preset)
    return res


def narration(vlm, strips, scores, *, k: Optional[int] = None, conditions: Sequence[str] = CONDITIONS,
              judge=None, log=None, shard=None, max_new_tokens: int = 100, seed: Optional[int] = None,
              progress: bool = True, mode: str = "boost_suppress", strength: float = 1e4, phase: str = "all",
              targets: Sequence[int] = range(1, N_PANELS + 1), prompt: str = NARRATION_PROMPT,
              batch_size: Optional[int] = None, preset: str = "gazekit", control_seeds: int = 3,
              control_pool: Optional[str] = None) -> Results:
    """Static narration steering: the ambiguous prompt "What is happening in this panel of the comic strip?"
    (unsteered models describe panel 1 or summarise), ~100 new tokens, one target panel for the whole answer.
    Same arguments and scoring as `vqa`."""
    return _static_protocol("narration", vlm, strips, scores, [k], conditions, judge=judge, log=log, shard=shard,
                            max_new_tokens=max_new_tokens, seed=seed, progress=progress, mode=mode,
                            strength=strength, phase=phase, targets=targets, prompt=prompt, batch_size=batch_size,
                            preset=preset, control_seeds=control_seeds, control_pool=control_pool)


def default_ks(vlm) -> list[int]:
    """K values for a sweep: 1, 2, 5, 10, 20, 50, 100, 200, 500 … up to half the model's heads (the largest K a
    size-matched random control allows), always including the default K."""
    total = int(vlm.n_layers) * int(vlm.n_heads)
    grid = [m * 10 ** e for e in range(6) for m in (1, 2, 5)]
    ks = sorted({g for g in grid if g <= total // 2} | {default_k(vlm)} | {total // 2})
    return [k for k in ks if 1 <= k <= total // 2]


def k_sweep(vlm, strips, scores, ks: Optional[Sequence[int]] = None, *,
            conditions: Sequence[str] = ("unsteered", "top", "random"), judge=None, log=None, shard=None,
            max_new_tokens: int = 15, seed: Optional[int] = None, progress: bool = True,
            mode: str = "boost_suppress", strength: float = 1e4, phase: str = "all",
            targets: Sequence[int] = range(1, N_PANELS + 1), question: str = VQA_QUESTION,
            batch_size: Optional[int] = None,
            preset: str = "gazekit", control_seeds: int = 3,
            control_pool: Optional[str] = None) -> Results:
    """VQA steering accuracy as a function of the number of heads K (paper: ~36% at K=5, 83% at K=100, lower
    again for much larger K). Runs the top-K (and random) condition for every K in `ks` (default `default_ks`),
    plus the unsteered baseline once. `.plot()` draws accuracy against K."""
    ks = default_ks(vlm) if ks is None else sorted({int(k) for k in ks})
    res = _static_protocol("k_sweep", vlm, strips, scores, ks, conditions, judge=judge, log=log, shard=shard,
                           max_new_tokens=max_new_tokens, seed=seed, progress=progress, mode=mode,
                           strength=strength, phase=phase, targets=targets, prompt=question, batch_size=batch_size,
                           preset=preset, control_seeds=control_seeds, control_pool=control_pool)
    res.config["ks"] = ks
    return res


# ------------------------------------------------------------------------------------------------------ dynamic
_SENTENCE_END = re.compile(r"[.!?\n;]")


class Schedule:
    """A steering target that walks through `order`: one target per segment of the generated text, a segment being
    `every` decode steps or, with ``every=None`` (or 0), one caption/sentence (ended by . ! ? ; or a newline).

    Pass it as `gazekit.steer`'s target (it is called with (decode step, text so far) and returns the 1-based
    target, None once `order` is used up); it records (step, target, characters of text so far) at every switch in
    `.record`, which `dynamic` uses to cut the answer into segments. `steps()` gives the same schedule as the
    {decode_step: target} dict `steer` also takes (steps mode only), which needs no decoding at each step.

    order: the targets in order (1-based panels, region names or boxes); every: decode steps per segment, or
    None/0 to switch after each sentence the model completes.
    """

    def __init__(self, order: Sequence, every: Optional[int] = None):
        self.order, self.every = list(order), (int(every) if every else None)
        self.record: list[list] = []
        self.__name__ = f"schedule{self.order}/" + (f"every{self.every}" if self.every else "caption")

    @staticmethod
    def sentences_in(text: str) -> int:
        """How many sentences `text` has completed (its count of . ! ? ; and newlines)."""
        return len(_SENTENCE_END.findall(text))

    def segment_at(self, step: int, text: str) -> int:
        """The 0-based segment that decode `step` belongs to, given the `text` generated before it."""
        if self.every:
            return step // self.every
        return self.sentences_in(text)

    def target_at(self, step: int, text: str):
        """The scheduled target at decode `step` after `text` (None past the end of `order`), without recording."""
        seg = self.segment_at(step, text)
        return self.order[seg] if seg < len(self.order) else None

    def steps(self) -> dict:
        """{decode_step: target} for `gazekit.steer` (steps mode): each segment's first step, then None (no
        steering) after the last segment."""
        if not self.every:
            raise ValueError("a sentence schedule (every=None) depends on the generated text: pass the Schedule "
                             "itself to gazekit.steer, not steps()")
        out = {i * self.every: t for i, t in enumerate(self.order)}
        out[len(self.order) * self.every] = None
        return out

    def __call__(self, step: int, text: str):
        target = self.target_at(step, text)
        if not self.record or self.record[-1][1] != target:
            self.record.append([int(step), target, len(text)])
        return target

    def __repr__(self):
        return f"Schedule({self.order}, every={self.every})"


def _segments(answer: str, record, order, every) -> list[str]:
    """Split the final answer into the text produced under each scheduled target."""
    if every is None:  # caption mode: one sentence per target
        parts = [p.strip() for p in re.split(r"(?<=[.!?\n;])", answer)]
        parts = [p for p in parts if words(p)]
        segs = parts[:len(order)]
    else:  # steps mode: the recorded switch points give each target's first character
        starts = [n_chars for _, target, n_chars in (record or []) if target is not None]
        segs = []
        for j in range(len(order)):
            a = starts[j] if j < len(starts) else None
            b = starts[j + 1] if j + 1 < len(starts) else None
            segs.append("" if a is None else answer[a:b].strip())
    return segs + [""] * (len(order) - len(segs))


def reference_spearman(scheduled: Sequence[int], judged: Sequence[Optional[int]]) -> Optional[float]:
    """One strip's Spearman correlation the reference's way: over the segments with a judged panel (None =
    unjudged/junk), only if there are at least 3 of them (else None: the strip does not count), NaN -> 0
    (e.g. the same panel judged every time)."""
    pairs = [(int(t), int(m)) for t, m in zip(scheduled, judged) if m is not None and m == m]
    if len(pairs) < 3:
        return None
    rho, _ = spearman([t for t, _ in pairs], [m for _, m in pairs])
    return 0.0 if rho != rho else float(rho)


def _reference_derangements(n_strips: int, seed: int) -> list[list[int]]:
    """The reference's schedules: one numpy RandomState(seed) drawn in strip order, a permutation redrawn until
    it has no fixed point (after 200 failures the shift by one), 1-based."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n_strips):
        for _try in range(201):
            perm = rng.permutation(N_PANELS).tolist()
            if all(perm[i] != i for i in range(N_PANELS)):
                break
        else:
            perm = [(i + 1) % N_PANELS for i in range(N_PANELS)]
        out.append([p + 1 for p in perm])
    return out


def dynamic(vlm, strips, scores, *, k: Optional[int] = None, conditions: Sequence[str] = ("unsteered", "top", "random"),
            every: Optional[int] = 50, judge=None, log=None, shard=None, max_new_tokens: Optional[int] = None,
            seed: Optional[int] = None, progress: bool = True, mode: str = "boost_suppress", strength: float = 1e4,
            phase: Optional[str] = None, prompt: Optional[str] = None, preset: str = "gazekit",
            control_seeds: int = 3,
            control_pool: Optional[str] = None) -> Results:
    """Dynamic narration: while the model narrates, the steering target walks along a seeded random derangement of
    the six panels (no panel in its own position), switching every `every` decode steps (the paper: 50) or, with
    ``every=None``, after each caption/sentence the model completes. Each segment of text is judged; the table has
    one row per (condition, strip, segment) and `.extra` holds the Spearman correlation between the scheduled
    panels and the panels described: ``spearman`` — the paper's 0.87 statistic, the mean over strips of each
    strip's rho (`reference_spearman`: >= 3 judged segments, NaN -> 0), with its spread and a bootstrap CI — and,
    for comparison, ``spearman_pooled`` over all judged segments of all strips. The unsteered row judges the
    unsteered narration's segments against the same schedule. max_new_tokens defaults to 6 * every (steps mode)
    or 120 (caption mode). prompt defaults to gazekit's PANEL_BY_PANEL_PROMPT, phase to "all".
    preset="reference": the reference's dynamic prompt (REFERENCE_DYNAMIC_PROMPT), decode-only steering
    (phase="decode"), its schedules (one numpy RandomState(seed) over the strips in order), its control sampler and
    seed 42, the Claude judge with the reference prompt (no baseline shown), unless given otherwise."""
    _check_preset(preset)
    reference = preset == "reference"
    prompt = prompt if prompt is not None else (REFERENCE_DYNAMIC_PROMPT if reference else PANEL_BY_PANEL_PROMPT)
    phase = phase if phase is not None else ("decode" if reference else "all")
    seed = _preset_seed(seed, preset)
    judge = _preset_judge(judge, preset)
    strips = list(strips)
    if not strips:
        raise ValueError("dynamic needs at least one strip")
    if every is not None and every < 1:
        raise ValueError(f"every must be >= 1 decode step or None (switch at each caption), got {every}")
    k = default_k(vlm, preset=preset) if k is None else int(k)
    max_new_tokens = max_new_tokens or (N_PANELS * every if every else 120)
    shard = parse_shard(shard)
    judge = get_judge(judge, strips)
    log = _open_log(log)
    arms = _make_arms(vlm, scores, conditions, [k], seed, control_seeds, _control_pool(preset, control_pool))
    schedules = _reference_derangements(len(strips), seed) if reference else None
    mine = [(i, s) for i, s in enumerate(strips) if in_shard(i, shard)]
    pbar = _tqdm(len(mine) * len(arms), "dynamic", progress)
    run = _Runner(vlm, log, judge, mode=mode, strength=strength, phase=phase, pbar=pbar)
    rows = []
    try:
        for idx, strip in mine:
            sid = _item_id(strip)
            meta = {"protocol": "dynamic", "strip": sid, "strip_index": idx}
            refs = _references(run, strip, sid, meta) if _needs_references(judge, strip) else None
            order = schedules[idx] if reference else derangement(N_PANELS, random.Random(f"{seed}:{sid}"))
            for arm in arms:
                sched = Schedule(order, every)
                gkey = resume_key("gen", "dynamic", arm.condition, f"k{arm.k}", sid, model=run.model, prompt=prompt,
                                  t=max_new_tokens, order=order, every=every,
                                  heads=_heads_json(arm.heads) if arm.heads is not None else None, mode=mode,
                                  strength=float(strength), phase=phase)
                meta2 = {**meta, "schedule": order, "every": every}
                # the unsteered run goes through the same schedule with no heads (a null intervention) so that
                # its text is split at the same decode steps as the steered runs
                g = run.generate(gkey, strip, prompt, arm, order, max_new_tokens, meta2, steer_target=sched)
                segs = _segments(g["answer"], g.get("switches", []), order, every)
                for j, (t, seg) in enumerate(zip(order, segs)):
                    v = run.verdict(gkey, seg, strip, refs, suffix=f"|seg{j}", question=prompt)
                    rows.append({"protocol": "dynamic", "condition": arm.condition, "k": arm.k,
                                 "n_heads": arm.n_heads, "pool": arm.pool, "control_seed": arm.control_seed,
                                 "strip": sid,
                                 "strip_index": idx, "segment": j + 1, "target": t, "text": seg,
                                 "verdict_panel": v.panel, "junk": v.junk, "failed": v.failed, "reason": v.reason,
                                 "hit": v.hit(t), "answer": g["answer"],
                                 **_spec_columns(arm, mode, strength),
                                 "schedule": json.dumps(order), "key": gkey})
    finally:
        pbar.close()
    table = _frame(rows)
    extra, controls = {}, {}
    if len(table):
        for (cond, kk), g in table.groupby(["condition", "k"], dropna=False, sort=False):
            ok = g[~g["junk"] & ~g["failed"]]
            rho, p = spearman(ok["target"], ok["verdict_panel"]) if len(ok) >= 2 else (float("nan"), float("nan"))
            per = []  # one rho per (strip, control draw), the reference's rule
            for _, gs in g.groupby(["strip", "control_seed"], dropna=False, sort=False):
                judged = [None if (j or f) else m for m, j, f in zip(gs["verdict_panel"], gs["junk"], gs["failed"])]
                r = reference_spearman(list(gs["target"]), judged)
                if r is not None:
                    per.append(r)
            ci = bootstrap_ci(per, seed=seed)
            headline = ci.mean if per else (0.0 if reference else float("nan"))  # the reference prints 0.0 then
            extra[f"{cond}" + ("" if kk != kk or kk is None else f"@k{int(kk)}")] = {
                "spearman": headline, "spearman_std": float(np.std(per)) if per else float("nan"),
                "ci_low": ci.low, "ci_high": ci.high, "n_strips": ci.n,
                "spearman_per_strip_mean": ci.mean,
                "spearman_pooled": rho, "p_value": p, "n_segments_judged": int(len(ok))}
        rand = table[table["condition"] == "random"]
        if len(rand):
            spread = {}
            for cs, gc in rand.groupby("control_seed", sort=True):
                per = [reference_spearman(list(gs["target"]), [None if (j or f) else m for m, j, f in
                                                                 zip(gs["verdict_panel"], gs["junk"], gs["failed"])])
                       for _, gs in gc.groupby("strip", sort=False)]
                per = [r for r in per if r is not None]
                spread[int(cs)] = float(np.mean(per)) if per else (0.0 if reference else float("nan"))
            vals = np.array(list(spread.values()))
            ok = vals[np.isfinite(vals)]
            controls = {f"k{k}": {"pool": str(rand["pool"].iloc[0]), "seeds": list(spread),
                                           "per_seed_spearman": spread,
                                           "mean": float(ok.mean()) if len(ok) else float("nan"),
                                           "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0,
                                           "n_seeds": len(vals)},
                        **{f"hit@k{k}": v for v in _control_spread(table, "hit").values()}}
    cfg = {"model": run.model, "prompt": prompt, "max_new_tokens": max_new_tokens, "every": every, "mode": mode,
           "strength": float(strength), "phase": phase, "seed": seed, "judge": getattr(judge, "name", "custom"),
           "n_strips": len(mine), "shard": shard, "conditions": [a.condition for a in arms],
           "log": None if log.path is None else str(log.path), **_control_config(arms), "preset": preset,
           "k_rule": _k_rule(vlm, preset)}
    return Results("dynamic", table, cfg, extra=extra, controls=controls)


# -------------------------------------------------------------------------------------------------------- boxes
def mentions(text: str, name: str, synonyms: Sequence[str] = ()) -> bool:
    """Whether `text` names the object: the name (or a synonym) as whole words, singular or plural
    ("dog"/"dogs", "bus"/"buses", "traffic light(s)")."""
    t = " " + " ".join(words(text)) + " "
    for n in (name, *synonyms):
        w = " ".join(words(n))
        if not w:
            continue
        forms = {w, w + "s", w + "es"}
        if w.endswith("y"):
            forms.add(w[:-1] + "ies")
        if any(f" {f} " in t for f in forms):
            return True
    return False


def boxes(vlm, scenes, scores, *, k: Optional[int] = None, conditions: Sequence[str] = ("unsteered", "top", "random"),
          log=None, shard=None, prompt: str = BOX_PROMPT, max_new_tokens: int = 30, seed: Optional[int] = None,
          progress: bool = True, mode: str = "boost_suppress", strength: float = 1e4, phase: str = "all",
          synonyms: Optional[dict] = None, preset: str = "gazekit", control_seeds: int = 3,
          control_pool: Optional[str] = None) -> Results:
    """Steering to a box in a natural image (`Scene`s, e.g. from `gazekit.scenes.from_coco`): for every scene and
    every named box, steer toward the box and check whether the answer mentions the box's name; the unsteered
    answer is scored against the same names. The paper: steering "more than doubles" the mention rate.
    `.extra["lift"]` = mention rate steered / unsteered per condition. The reference has no boxes experiment:
    preset="reference" only sets its K, seed and control sampler."""
    _check_preset(preset)
    seed = _preset_seed(seed, preset)
    scenes = list(scenes)
    if not scenes:
        raise ValueError("boxes needs at least one Scene, e.g. gazekit.scenes.from_coco(annotations, images_dir)")
    k = default_k(vlm, preset=preset) if k is None else int(k)
    shard = parse_shard(shard)
    log = _open_log(log)
    synonyms = synonyms or {}
    arms = _make_arms(vlm, scores, conditions, [k], seed, control_seeds, _control_pool(preset, control_pool))
    mine = [(i, s) for i, s in enumerate(scenes) if in_shard(i, shard)]
    steered = [a for a in arms if a.heads is not None]
    pbar = _tqdm(sum(1 + len(steered) * len(s.names) for _, s in mine), "boxes", progress)
    run = _Runner(vlm, log, None, mode=mode, strength=strength, phase=phase, pbar=pbar)
    unsteered_arm = Arm("unsteered", None, None)
    rows = []
    try:
        for idx, scene in mine:
            sid = _item_id(scene)
            meta = {"protocol": "boxes", "scene": sid, "scene_index": idx}
            ukey = resume_key("gen", "boxes", "unsteered", sid, model=run.model, prompt=prompt, t=max_new_tokens)
            u = run.generate(ukey, scene, prompt, unsteered_arm, None, max_new_tokens, meta)
            for arm in arms:
                for name in scene.names:
                    if arm.heads is None:
                        g, gkey = u, ukey
                    else:
                        gkey = resume_key("gen", "boxes", arm.condition, f"k{arm.k}", sid, name, model=run.model,
                                          prompt=prompt, t=max_new_tokens, heads=_heads_json(arm.heads), mode=mode,
                                          strength=float(strength), phase=phase)
                        g = run.generate(gkey, scene, prompt, arm, name, max_new_tokens, meta)
                    rows.append({"protocol": "boxes", "condition": arm.condition, "k": arm.k,
                                 "n_heads": arm.n_heads, "pool": arm.pool, "control_seed": arm.control_seed,
                                 "scene": sid,
                                 "scene_index": idx, "target": name, "answer": g["answer"],
                                 "mentioned": mentions(g["answer"], name, synonyms.get(name, ())),
                                 **_spec_columns(arm, mode, strength),
                                 "key": gkey})
    finally:
        pbar.close()
    table = _frame(rows)
    res = Results("boxes", table, {"model": run.model, "prompt": prompt, "max_new_tokens": max_new_tokens,
                                   "mode": mode, "strength": float(strength), "phase": phase, "seed": seed,
                                   "n_scenes": len(mine), "shard": shard,
                                   "log": None if log.path is None else str(log.path), **_control_config(arms),
                                   "preset": preset, "k_rule": _k_rule(vlm, preset)}, metric="mentioned")
    res.controls = _control_spread(table, "mentioned")
    if len(table):
        base = table[table["condition"] == "unsteered"]["mentioned"].mean() if "unsteered" in conditions else None
        for cond in table["condition"].unique():
            rate = float(table[table["condition"] == cond]["mentioned"].mean())
            res.extra[cond] = {"mention_rate": rate,
                               "lift": (rate / base) if base else float("nan")}
    return res
