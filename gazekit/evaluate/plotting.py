"""Figures for `Results`, in the paper's style: bars with 95% bootstrap CI error bars and a dashed chance line.

The bars and error bars are drawn from `Results.summary()` / `by_panel()` (scipy's 10,000-resample bootstrap), so
a figure shows exactly the numbers of its table."""
from __future__ import annotations

import numpy as np

CHANCE = 1 / 6
ORDER = ("unsteered", "unablated", "top", "random", "all")
NAMES = {"unsteered": "unsteered", "unablated": "unablated", "top": "top-K gaze heads",
         "random": "random heads (size-matched)", "all": "all heads"}


def _label(r):
    k = r.get("k")
    base = NAMES.get(r["condition"], r["condition"])
    return base.replace("top-K", f"top-{int(k)}").replace("random heads", f"{int(k)} random heads") \
        if k is not None and k == k else base


def provenance(res) -> str:
    """Who judged, how many answers, how many were junk: named on every results table and figure (issue 26), so a
    number is never read without its judge."""
    t = res.table
    judge = res.config.get("judge") or (t["judge"].iloc[0] if "judge" in t.columns and len(t) else None)
    parts = [f"judge: {judge}"] if judge else []
    parts.append(f"n = {len(t)}")
    if "junk" in t.columns and len(t):
        parts.append(f"junk {100 * t['junk'].astype(float).mean():.1f}%")
    return ", ".join(parts)


def plot_results(res, ax=None, by: str = "condition"):
    """Bar chart of a `Results` (what `Results.plot` draws): accuracy with 95% CIs per condition
    (`by="condition"`), per target panel (`by="panel"`), or accuracy and junk rate against K for a `k_sweep`; the
    chance line where 1/6 is the baseline; the judge, n and junk rate in the title. ax: axes to draw into (default:
    a new figure). Returns the axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    metric_name = ("mentions the boxed object" if res.metric == "mentioned" else
                   "segments describing the scheduled panel" if res.protocol == "dynamic" else
                   "answers describing the asked panel" if res.protocol == "ablation" else
                   "answers describing the target panel")
    # dynamic: a derangement never schedules a panel in its own place, so "1/6" is no baseline there; the
    # unsteered bar (0 by construction) is the baseline to read against
    chance = CHANCE if res.metric == "hit" and res.protocol != "dynamic" else None
    if res.protocol == "k_sweep" and by == "condition":
        return _plot_sweep(res, ax, chance)
    if by == "panel":
        s = res.by_panel()
        conds = [c for c in ORDER if c in set(s["condition"])] + \
                [c for c in s["condition"].unique() if c not in ORDER]
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.6))
        pal = sns.color_palette("deep", len(conds))
        width = 0.8 / len(conds)
        for j, c in enumerate(conds):
            g = s[s["condition"] == c].sort_values("target")
            x = g["target"].to_numpy(dtype=float) + (j - (len(conds) - 1) / 2) * width
            y = g["accuracy"].to_numpy()
            err = np.vstack([y - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - y])
            ax.bar(x, y, width=width, color=pal[j], label=NAMES.get(c, c))
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor="black", capsize=2, lw=1)
        ax.set_xticks(range(1, 7))
        ax.set_xlabel("target panel")
        ax.legend(frameon=False, fontsize=8)
    else:
        s = res.summary()
        s = s.assign(_o=[ORDER.index(c) if c in ORDER else 99 for c in s["condition"]]).sort_values(["_o", "k"])
        if ax is None:
            _, ax = plt.subplots(figsize=(1.3 * len(s) + 2, 3.6))
        labels = [_label(r) for _, r in s.iterrows()]
        y = s["accuracy"].to_numpy()
        err = np.vstack([y - s["ci_low"].to_numpy(), s["ci_high"].to_numpy() - y])
        x = np.arange(len(s))
        ax.bar(x, y, color=sns.color_palette("deep", len(s)), width=0.65)
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1.2)
        for xi, yi, top in zip(x, y, s["ci_high"].to_numpy()):  # the value sits above its error bar
            ax.text(xi, max(yi, top) + 0.02, f"{100 * yi:.1f}%", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, labels, rotation=15, ha="right")
    if chance is not None:
        ax.axhline(chance, ls="--", color="gray", lw=1)
        ax.text(ax.get_xlim()[1], chance, " chance (1/6)", va="center", ha="left", fontsize=8, color="gray")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(metric_name)
    what = f"ablation ({res.config.get('how')})" if res.protocol == "ablation" else res.protocol
    ax.set_title(f"{what}: {res.config.get('model', '')}\n{provenance(res)}", fontsize=9)
    sns.despine(ax=ax)
    return ax


def _plot_sweep(res, ax, chance):
    import matplotlib.pyplot as plt
    import seaborn as sns

    s = res.summary()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    pal = sns.color_palette("deep", 4)
    for j, c in enumerate(("top", "random")):
        g = s[s["condition"] == c].sort_values("k")
        if g.empty:
            continue
        ax.plot(g["k"], g["accuracy"], "o-", color=pal[j], label=f"{NAMES[c]}: describe the target")
        ax.fill_between(g["k"].astype(float), g["ci_low"], g["ci_high"], color=pal[j], alpha=0.2)
        if "junk_rate" in g.columns and g["junk_rate"].notna().any():  # what the misses are: garbled answers
            ax.plot(g["k"], g["junk_rate"], ":", color=pal[j], lw=1.2, label=f"{NAMES[c]}: junk answers")
    u = s[s["condition"] == "unsteered"]
    if len(u):
        ax.axhline(float(u["accuracy"].iloc[0]), color=pal[2], lw=1.2, label="unsteered")
    if chance is not None:
        ax.axhline(chance, ls="--", color="gray", lw=1, label="chance (1/6)")
    ax.set_xscale("log")
    ax.set_xlabel("number of steered heads K")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of answers")
    ax.set_title(f"k_sweep: {res.config.get('model', '')}\n{provenance(res)}", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    sns.despine(ax=ax)
    return ax
