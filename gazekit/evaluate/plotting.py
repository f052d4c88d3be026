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


def plot_survey(report, fig=None):
    """The figure of a `SurveyReport` (what `SurveyReport.plot` draws), one column of each panel per model:
    (a) every head's gaze score (dots, jittered) with the 0.5 line, (b) the relative depth (layer / (layers - 1))
    of the top-K heads, (c) VQA steering accuracy with 95% bootstrap CI error bars for unsteered, top-K gaze heads
    and the size-matched random control, and the 1/6 chance line. fig: a Figure to draw into (default: a new one).
    Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    rows = report.rows
    n = max(len(rows), 1)
    if fig is None:
        fig = plt.figure(figsize=(max(11.0, 6.0 + 2.4 * n), 4.0))
    ax_s, ax_d, ax_v = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 0.8, 1.2]})
    labels = [r["model"] for r in rows]
    pal = sns.color_palette("deep", 4)
    rng = np.random.default_rng(0)  # jitter only: the same picture every time
    for i, r in enumerate(rows):
        s = np.asarray(r["scores"], dtype=float).ravel()
        ax_s.scatter(i + rng.uniform(-0.25, 0.25, s.size), s, s=9, alpha=0.6, color=pal[0], lw=0)
        q = r["score"]
        ax_s.hlines([q["q50"]], i - 0.32, i + 0.32, color="black", lw=1.5)
        depth = [h["relative_depth"] for h in r["top_heads"]]
        ax_d.scatter(i + rng.uniform(-0.15, 0.15, len(depth)), depth, s=22, alpha=0.75, color=pal[1], lw=0)
    ax_s.axhline(0.5, ls="--", color="gray", lw=1)
    ax_s.set_xticks(range(len(rows)), labels, rotation=15, ha="right")
    ax_s.set_xlim(-0.6, n - 0.4)
    ax_s.set_ylim(-0.02, 1.02)
    ax_s.set_ylabel("gaze score (mean diagonal)")
    ax_s.set_title("(a) every head's gaze score\nbar: median, dashed: 0.5", fontsize=9)
    ax_d.set_xticks(range(len(rows)), labels, rotation=15, ha="right")
    ax_d.set_xlim(-0.6, n - 0.4)
    ax_d.set_ylim(-0.05, 1.05)
    ax_d.set_ylabel("relative depth\n(0 = first layer, 1 = last)")
    ax_d.set_title("(b) where the\ntop-K heads sit", fontsize=9)
    conds = ("unsteered", "top", "random")
    names = ("unsteered", "top-K gaze heads", "random heads (size-matched)")
    width = 0.8 / len(conds)
    for j, (c, name) in enumerate(zip(conds, names)):
        x, y, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            s = r.get("steering", {}).get(c)
            if not s or s.get("accuracy") is None:
                continue
            x.append(i + (j - 1) * width)
            y.append(s["accuracy"])
            lo.append(s["accuracy"] - s["ci_low"])
            hi.append(s["ci_high"] - s["accuracy"])
        if x:
            ax_v.bar(x, y, width=width, color=pal[[2, 0, 3][j]], label=name)
            ax_v.errorbar(x, y, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
    ax_v.axhline(CHANCE, ls="--", color="gray", lw=1, label="chance (1/6)")
    ax_v.set_xticks(range(len(rows)), labels, rotation=15, ha="right")
    ax_v.set_ylim(0, 1.1)
    ax_v.set_ylabel("answers describing the target panel")
    c = report.config
    ax_v.set_title(f"(c) VQA steering: {c.get('n_eval')} strips x 6 targets\njudge: {c.get('judge')}, "
                   "95% bootstrap CIs", fontsize=9)
    ax_v.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (ax_s, ax_d, ax_v):
        sns.despine(ax=ax)
    fig.tight_layout()
    return fig
