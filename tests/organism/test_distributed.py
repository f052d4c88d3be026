"""The CLI under launchers on CPU (gloo, 127.0.0.1): two processes give the one-process ranking and VQA rows, and a
run with one process killed mid-way resumes on relaunch with nothing lost or duplicated. The commands are the
README's "Running at scale" ones with CPU settings."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from gazekit.distributed import from_launcher, merge_discovery
from gazekit.evaluate.runlog import read_rows

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
VQA = ["vqa", "--strips", "synthetic:4:7", "--judge", "exact", "--conditions", "unsteered,top", "--batch-size", "1",
       "--no-progress"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_port()), "-m", "gazekit", *args]


def _one(args) -> list[str]:
    return [PY, "-m", "gazekit", *args]


def _run(cmd, timeout=240):
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def ranking(tmp_path_factory):
    out = tmp_path_factory.mktemp("d1")
    _run(_one(["discover", "--strips", "synthetic:6:100", "--out", str(out), "--no-progress"]))
    return out / "ranking.json"


@pytest.fixture(scope="module")
def vqa_one(tmp_path_factory, ranking):
    out = tmp_path_factory.mktemp("v1")
    t = time.perf_counter()
    _run(_one(VQA + ["--heads", str(ranking), "--out", str(out)]))
    print(f"one-process vqa: {time.perf_counter() - t:.1f} s")
    return out


def _pairs(out: Path):
    t = pd.read_csv(out / "vqa.csv")
    return t.set_index(["condition", "strip", "target"])[["answer", "verdict_panel", "hit"]].sort_index()


def test_launcher_env_gives_shard():
    assert from_launcher({}) is None
    assert from_launcher({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert from_launcher({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).shard == "1/2"
    with pytest.raises(SystemExit, match="RANK=2"):
        from_launcher({"RANK": "2", "WORLD_SIZE": "2"})


def test_discover_two_processes_equals_one(tmp_path, ranking):
    out = tmp_path / "d2"
    _run(_torchrun(["discover", "--strips", "synthetic:6:100", "--out", str(out), "--no-progress"]))
    one, two = json.loads(ranking.read_text()), json.loads((out / "ranking.json").read_text())
    assert [(r["layer"], r["head"]) for r in two] == [(r["layer"], r["head"]) for r in one]
    assert [r["score"] for r in two] == pytest.approx([r["score"] for r in one], abs=1e-9)
    # each rank scored every other strip and kept its matrices; the reduce counts all six strips
    from gazekit import GazeScores
    parts = [GazeScores.load(p) for p in sorted((out / "discover-shards").glob("*.json"))]
    assert [p.n_strips for p in parts] == [3, 3]
    assert merge_discovery(parts).n_strips == 6
    assert (out / "ranking.png").exists()


def test_vqa_two_processes_equals_one_and_resumes_after_a_kill(tmp_path, ranking, vqa_one):
    out = tmp_path / "v2"
    args = VQA + ["--heads", str(ranking), "--out", str(out)]
    # first launch: kill rank 1 once its log has a row, before it is done
    launcher = subprocess.Popen(_torchrun(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    log1 = out / "run.shard-1-of-2.jsonl"
    rows_at_kill = None
    deadline = time.time() + 180
    try:
        while time.time() < deadline and launcher.poll() is None:
            if log1.exists() and len(read_rows(log1)) >= 1:
                pid = _rank_pid(launcher.pid, "1")
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    rows_at_kill = len(read_rows(log1))
                    break
            time.sleep(0.02)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert rows_at_kill is not None, "rank 1 was never seen running"
    assert launcher.returncode != 0
    assert not (out / "vqa.csv").exists(), "rank 0 must not merge while a shard is missing"

    t = time.perf_counter()
    _run(_torchrun(args))  # the same command again resumes both shards
    print(f"two-process vqa (resume): {time.perf_counter() - t:.1f} s")
    full = len(read_rows(log1))
    assert rows_at_kill < full, f"the kill came after rank 1 finished ({rows_at_kill} of {full} rows)"
    for i in (0, 1):
        keys = [r["key"] for r in read_rows(out / f"run.shard-{i}-of-2.jsonl")]
        assert len(keys) == len(set(keys)), Counter(k for k in keys if keys.count(k) > 1)
    assert read_rows(out / "run.jsonl") == []  # the merge generated nothing: every row came from a shard
    pd.testing.assert_frame_equal(_pairs(out), _pairs(vqa_one))
    one_summary = pd.read_csv(vqa_one / "vqa_summary.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "vqa_summary.csv"), one_summary)
    assert (out / "vqa.png").exists()


def test_vqa_two_processes_fresh_timing(tmp_path, ranking, vqa_one):
    out = tmp_path / "v2"
    t = time.perf_counter()
    _run(_torchrun(VQA + ["--heads", str(ranking), "--out", str(out)]))
    print(f"two-process vqa (fresh): {time.perf_counter() - t:.1f} s")
    pd.testing.assert_frame_equal(_pairs(out), _pairs(vqa_one))


def test_vqa_under_accelerate_launch_equals_one(tmp_path, ranking, vqa_one):
    pytest.importorskip("accelerate")
    out = tmp_path / "va"
    # --multi_gpu is accelerate's torchrun-backed launcher; without GPUs its processes run on CPU with gloo
    # (accelerate's --cpu flag starts a single process)
    _run([PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--main_process_ip", "127.0.0.1", "--main_process_port", str(_port()), "-m", "gazekit",
          *VQA, "--heads", str(ranking), "--out", str(out)])
    assert (out / "run.shard-1-of-2.jsonl").exists()
    pd.testing.assert_frame_equal(_pairs(out), _pairs(vqa_one))


def _rank_pid(root: int, rank: str):
    """The pid of the launcher's worker with RANK=rank (a descendant of `root`), read from /proc."""
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if pid != root and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + rank.encode() in env:
                return pid
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(k) for k in kids)
    return None


def test_barrier_timeout_names_the_missing_rank(tmp_path):
    """Rank 1 joins the group but never reaches the barrier: rank 0 gives up after the timeout naming rank 1."""
    port = str(_port())
    code = ("import os, sys, time, torch.distributed as d\n"
            "from gazekit.distributed import from_launcher, wait_for_all, _init_group\n"
            "l = from_launcher()\n"
            "if l.rank == 1:\n"
            "    _init_group(30); time.sleep(8); sys.exit(0)\n"
            "wait_for_all(l, 3, 'vqa')\n")
    procs = []
    for rank in ("0", "1"):
        env = dict(_env(), RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([PY, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    out0 = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=60)
    assert procs[0].returncode != 0
    assert "not every rank finished its vqa shard within 3 s" in out0[1]
    assert "Ranks 1 failed" in out0[1].split("within 3 s", 1)[1], out0[1][-2000:]


def test_gpus_per_process_slices_visible_gpus_by_local_rank(monkeypatch):
    import torch

    from gazekit.distributed import Launch, place_process
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert place_process(Launch(3, 4, 1), 2, environ=env) == "auto" and env["CUDA_VISIBLE_DEVICES"] == "6,7"
    env = {}
    assert place_process(Launch(2, 4, 2), 1, environ=env) is None and env["CUDA_VISIBLE_DEVICES"] == "2"
    with pytest.raises(SystemExit, match="--nproc-per-node"):
        place_process(Launch(2, 4, 2), 2, environ={})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    env = {}
    assert place_process(Launch(1, 2, 1), 1, environ=env) is None and env == {}  # CPU: nothing to place
