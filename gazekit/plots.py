"""Figures in the paper's style (matplotlib + seaborn). Everything a reader sees as a panel is 1-based."""
from __future__ import annotations

from typing import Optional

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_gaze_scores(scores, k: Optional[int] = None):
    """Layer x head heatmap of gaze scores, their histogram, and the best head's 6x6 matrix."""
    import seaborn as sns

    plt = _plt()
    ncols = 3 if scores.matrix is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4))
    sns.heatmap(scores.scores, ax=axes[0], cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(scores.scores))),
                cbar_kws={"label": "gaze score"})
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title("gaze score by layer and head")
    if k:
        for h in scores.top(k):
            axes[0].add_patch(_plt().Rectangle((h.head, h.layer), 1, 1, fill=False, ec="red", lw=1.5))
    sns.histplot(scores.scores.ravel(), bins=20, ax=axes[1], color="tab:blue")
    axes[1].set_xlabel("gaze score")
    axes[1].set_ylabel("heads")
    axes[1].set_title("distribution")
    if ncols == 3:
        best = scores.top(1)[0]
        plot_head_matrix(scores, best, ax=axes[2])
    fig.tight_layout()
    return fig


def plot_head_matrix(scores, head, ax=None):
    """One head's 6x6 matrix: queried panel (rows) x attended panel (columns), 1-based labels."""
    import seaborn as sns

    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.2))
    m = scores.matrix[head[0], head[1]]
    labels = [str(i + 1) for i in range(m.shape[-1])]
    sns.heatmap(m, ax=ax, cmap="magma", vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=labels, yticklabels=labels, cbar=False)
    ax.set_xlabel("attended panel")
    ax.set_ylabel("queried panel")
    ax.set_title(f"L{head[0]}.H{head[1]}  score {scores.scores[head[0], head[1]]:.2f}")
    return ax


def plot_trajectory(traj, weighted: bool = False, ax=None, title: Optional[str] = None,
                    vmax: Optional[float] = None):
    """Staircase figure: mean attention of the tracked heads over regions at each generated token. vmax: the top of
    the colour scale (default: the largest value); give two figures the same vmax to compare them."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5, 0.32 * len(traj.tokens) + 2), 3.0))
    m = traj.mean(weighted).T  # [R, T]
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
    ax.set_yticks(range(m.shape[0]))
    ax.set_yticklabels([str(n) for n in traj.region_names] or [str(i + 1) for i in range(m.shape[0])])
    ax.set_ylabel("panel")
    ax.set_xticks(range(len(traj.tokens)))
    ax.set_xticklabels([t.strip() or "·" for t in traj.tokens], rotation=90, fontsize=7)
    ax.plot(m.argmax(0), color="white", lw=1, marker=".", ms=3)
    ax.set_title(title or f"attention of {len(traj.heads)} heads while generating"
                 + (" (value-weighted)" if weighted else ""))
    ax.set_xlabel("generated token")
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.01,
                       label="value-weighted attention" if weighted else "attention (mean over heads)")
    ax.figure.tight_layout()
    return ax.figure


# ---------------------------------------------------------------------------------- tutorial helpers (issue 6)
def plot_regions(prepared, ax=None, title: Optional[str] = None):
    """The image with each image token drawn at its cell centre, coloured by the region (panel) it belongs to:
    how gazekit maps panels onto the token grid. Tokens in no region (e.g. over padding) are grey crosses."""
    import matplotlib.colors as mcolors

    plt = _plt()
    scene = prepared.scenes[0]
    if ax is None:
        W, H = scene.image.size
        _, ax = plt.subplots(figsize=(min(12.0, 1.5 + 9.0 * W / max(W, 3 * H)), 2.8))
    ax.imshow(np.asarray(scene.image), alpha=0.55)
    pos = prepared.cells.positions.cpu().numpy()
    centres = np.asarray(prepared.cells.centres)
    owner = np.full(len(pos), -1)
    for r, region in enumerate(prepared.regions):
        owner[np.isin(pos, region.cpu().numpy())] = r
    palette = list(mcolors.TABLEAU_COLORS.values())
    for r in range(len(prepared.regions)):
        c = centres[owner == r]
        ax.scatter(c[:, 0], c[:, 1], s=28, color=palette[r % len(palette)], edgecolor="black", lw=0.4,
                   label=str(scene.names[r]))
    none = centres[owner < 0]
    if len(none):
        ax.scatter(none[:, 0], none[:, 1], s=14, marker="x", color="0.5", label="no region")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(ncol=len(prepared.regions) + 1, fontsize=7, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, 0.0), title="region of each image token", title_fontsize=7)
    ax.set_title(title or f"{len(pos)} image tokens, {len(prepared.regions)} regions", fontsize=10)
    return ax.figure


def plot_capture(attention, region_names=None, title: Optional[str] = None, vmax: Optional[float] = None):
    """`gazekit.capture` output [layers, heads, regions] as one heatmap per layer (rows = heads, columns =
    regions, 1-based names), on one colour scale."""
    import seaborn as sns

    plt = _plt()
    a = np.asarray(attention)
    L, H, R = a.shape
    names = [str(n) for n in (region_names or range(1, R + 1))]
    fig, axes = plt.subplots(1, L, figsize=(1.2 + 0.45 * R * L + 0.6 * L, 1.2 + 0.22 * H), squeeze=False)
    vmax = float(vmax if vmax is not None else max(a.max(), 1e-9))
    for l, ax in enumerate(axes[0]):
        sns.heatmap(a[l], ax=ax, cmap="viridis", vmin=0, vmax=vmax, cbar=l == L - 1, xticklabels=names,
                    yticklabels=[str(h) for h in range(H)] if l == 0 else False,
                    cbar_kws={"label": "attention mass"} if l == L - 1 else None)
        ax.set_title(f"layer {l}", fontsize=9)
        ax.set_xlabel("region")
        ax.tick_params(axis="y", labelsize=7, labelrotation=0)
        if l == 0:
            ax.set_ylabel("head")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
