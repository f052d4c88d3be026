"""Running the CLI under an existing launcher: ``torchrun -m gazekit ...`` or ``accelerate launch -m gazekit ...``.

gazekit grows no scheduler of its own. A launcher starts one process per GPU (or per slice of GPUs) and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (torchrun and accelerate both do); each process then runs shard
``RANK/WORLD_SIZE`` of the work with its own resumable JSONL log (the ``--shard i/n`` mechanism of
`gazekit.evaluate.runlog`), rank 0 waits for the others at a gloo barrier and merges table, summary and figure.
Discovery splits the strips across ranks and rank 0 sums the ranks' 6x6 matrices weighted by their strip counts,
so the ranking equals the one-process ranking.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["Launch", "from_launcher", "place_process", "wait_for_all", "merge_discovery", "finish"]


@dataclass(frozen=True)
class Launch:
    """This process's place in a launcher's job: global rank, number of processes, rank within its node."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def shard(self) -> str:
        """The ``--shard i/n`` spec this process runs."""
        return f"{self.rank}/{self.world_size}"


def from_launcher(environ=None) -> Optional[Launch]:
    """The launch read from torchrun/accelerate's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None
    for a plain single process (no launcher, or a launcher with one process)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise SystemExit(f"RANK={env['RANK']!r} / WORLD_SIZE={env['WORLD_SIZE']!r} are not integers; start "
                         "gazekit with torchrun or accelerate launch, or unset them") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise SystemExit(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}; check the launcher's settings")
    return Launch(rank, world, local)


def place_process(launch: Optional[Launch], gpus_per_process: int = 1, environ=None) -> Optional[str]:
    """Give this process its GPUs before anything initialises CUDA, and return the device map to load with.

    One GPU per process (the default): process with local rank r sees only GPU r. ``gpus_per_process=N``: it sees
    GPUs r*N ... r*N+N-1 (a slice of ``CUDA_VISIBLE_DEVICES`` if the job already restricts them) and loads with
    ``device_map="auto"`` over them, for models that do not fit on one GPU. No GPU: nothing changes (CPU)."""
    env = os.environ if environ is None else environ
    if gpus_per_process < 1:
        raise SystemExit(f"--gpus-per-process must be >= 1, got {gpus_per_process}")
    if launch is None and gpus_per_process == 1:
        return None
    import torch

    # device_count() reads CUDA_VISIBLE_DEVICES without initialising a CUDA context, so narrowing it after is fine
    n_visible = torch.cuda.device_count()
    if n_visible == 0:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n_visible)]
    local = 0 if launch is None else launch.local_rank
    mine = ids[local * gpus_per_process:(local + 1) * gpus_per_process]
    if len(mine) < gpus_per_process:
        raise SystemExit(f"local rank {local} needs GPUs {local * gpus_per_process}..{(local + 1) * gpus_per_process - 1}"
                         f" with --gpus-per-process {gpus_per_process}, but only {len(ids)} are visible: start "
                         f"{max(1, len(ids) // gpus_per_process)} processes per node (--nproc-per-node)")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return "auto" if gpus_per_process > 1 else None


def _init_group(timeout_s: float):
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo on every device: the group only carries a barrier (the data travel in files), and gloo's
        # monitored_barrier names the ranks that did not arrive, which nccl's barrier does not
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist


def wait_for_all(launch: Launch, timeout_s: float, what: str):
    """Barrier across the launch: every rank arrives once its shard is written. Raises on rank 0 with the ranks that
    did not arrive within `timeout_s` (their logs are kept; rerun the same command to resume)."""
    dist = _init_group(timeout_s)
    try:
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError as e:
        raise SystemExit(f"rank {launch.rank}: not every rank finished its {what} shard within {timeout_s:g} s "
                         f"({e}); their logs are kept: rerun the same command to resume") from None


def finish():
    """Leave the process group (if one was started)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_ranking_path(out: Path, rank: int, world: int) -> Path:
    """Where rank `rank` of `world` writes its partial discovery (ranking JSON + matrices sidecar)."""
    return Path(out) / "discover-shards" / f"ranking.shard-{rank}-of-{world}.json"


def merge_discovery(parts: Sequence, **kw):
    """One `GazeScores` from the ranks' partial ones: the mean matrix over all strips, i.e. the sum of each part's
    mean matrix times its strip count, divided by the total count (what one process over all strips computes)."""
    from gazekit.discover import GazeScores

    parts = [p for p in parts if p.n_strips]
    if not parts or any(p.matrix is None for p in parts):
        raise ValueError("merge_discovery needs the partial scores with their matrices (the .gazekit.npz sidecars)")
    total = sum(p.matrix.astype(np.float64) * p.n_strips for p in parts)
    n = sum(p.n_strips for p in parts)
    return GazeScores.from_matrix(total / n, model_name=parts[0].model_name, n_strips=n, **kw)
