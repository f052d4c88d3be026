"""The resumable run log, sharding, and resume/sharding of the protocols (on a scripted fake VLM)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gazekit.evaluate.runlog import RunLog, in_shard, parse_shard, read_rows, resume_key, shard_log_paths, spec_digest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


# ------------------------------------------------------------------------------------------------------ RunLog
def test_resume_key_format_is_the_logs_so_old_logs_resume():
    """One function formats every key; its format is the one logs were written with (an old log still resumes)."""
    import hashlib
    spec = {"model": "m", "prompt": "What?", "t": 15, "heads": [[0, 1]], "strength": 1e4}
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    assert spec_digest(**spec) == digest
    assert resume_key("gen", "vqa", "top", "k7", "strip-1", "t3", **spec) == f"gen|vqa|top|k7|strip-1|t3|{digest}"
    assert resume_key("judge", "exact", "gen|vqa|x|abc|seg2") == "judge|exact|gen|vqa|x|abc|seg2"  # no spec, no hash
    assert resume_key("gen", "x", model="a") != resume_key("gen", "x", model="b")


def test_append_reopen_and_done(tmp_path):
    p = tmp_path / "sub" / "run.jsonl"
    with RunLog(p) as log:
        log.append({"key": "a", "x": 1})
        log.append({"key": "b", "x": 2, "failed": True})
        assert log.done("a") and not log.done("b") and "a" in log and log.get("b")["x"] == 2
    lines = p.read_text().splitlines()
    assert [json.loads(ln)["key"] for ln in lines] == ["a", "b"]
    with RunLog(p) as log:
        assert log.done("a") and not log.done("b")  # a failed row is retried on resume ...
        log.append({"key": "b", "x": 3})
        assert log.done("b") and log.get("b")["x"] == 3  # ... and the new row supersedes it
    assert len(RunLog(p).rows()) == 2
    with pytest.raises(ValueError, match="key"):
        RunLog(tmp_path / "other.jsonl").append({"x": 1})


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "run.jsonl"
    p.write_text('{"key": "a", "v": 1}\n{"key": "b", "v": 2}\n{"key": "c", "v"')
    with pytest.warns(RuntimeWarning, match="torn"):
        log = RunLog(p)
    assert log.done("a") and log.done("b") and not log.done("c")
    log.append({"key": "c", "v": 3})
    log.close()
    rows = [json.loads(ln) for ln in p.read_text().splitlines()]  # every line parses: the tail was cut
    assert [r["key"] for r in rows] == ["a", "b", "c"]


def test_one_writer_per_log(tmp_path):
    p = tmp_path / "run.jsonl"
    a = RunLog(p)
    with pytest.raises(RuntimeError, match="another process"):
        RunLog(p)
    a.close()
    RunLog(p).close()


def test_in_memory_log():
    log = RunLog()
    log.append({"key": "k"})
    assert log.done("k") and log.path is None


def test_shards_partition_the_work():
    n = 4
    shards = [[i for i in range(23) if in_shard(i, (s, n))] for s in range(n)]
    assert sorted(sum(shards, [])) == list(range(23))  # union = all, and no item twice
    assert all(abs(len(s) - 23 / n) < 1 for s in shards)
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    for bad in ("3/3", "-1/2", "a/b", (2, 1)):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shard_log_paths(tmp_path):
    (tmp_path / "run.shard-0-of-2.jsonl").write_text("")
    (tmp_path / "run.shard-1-of-2.jsonl").write_text("")
    mine, others = shard_log_paths(tmp_path, "1/2")
    assert mine.name == "run.shard-1-of-2.jsonl" and others == []
    mine, others = shard_log_paths(tmp_path, None)
    assert mine.name == "run.jsonl" and [o.name for o in others] == ["run.shard-0-of-2.jsonl",
                                                                      "run.shard-1-of-2.jsonl"]


# ------------------------------------------------------------------------------------------ protocols on fakes
@pytest.fixture(scope="module")
def strips():
    from gazekit.comics import synthetic
    return synthetic(5, seed=3)


def _cmp(df):
    cols = ["condition", "k", "strip", "target", "answer", "verdict_panel", "hit", "key"]
    return df[cols].sort_values(["condition", "strip", "target"]).reset_index(drop=True)


def test_fake_vqa_numbers(fake, strips):
    """The idealised fake: top-K always hits, random = unsteered (hits only the default panel), all = junk."""
    from gazekit.evaluate import vqa
    vlm, scores = fake
    res = vqa(vlm, strips, scores, progress=False)
    s = res.summary().set_index("condition")
    assert s.loc["top", "accuracy"] == 1.0
    assert s.loc["unsteered", "accuracy"] == pytest.approx(1 / 6)
    assert s.loc["random", "accuracy"] == pytest.approx(1 / 6)
    assert s.loc["random", "accuracy_nondefault"] == 0.0 and s.loc["all", "junk_rate"] == 1.0
    # batched across strips and targets (8 rows per call on a model without `prepare`); the random control is
    # drawn for 3 seeds
    assert len(res.table) == 5 * 6 * (4 + 2) and vlm.batches == [5] + [8, 8, 8, 6] * 5
    row = res.table[(res.table.condition == "top")].iloc[0]
    spec = json.loads(row["heads"])
    assert sorted(map(tuple, spec)) == sorted(vlm.gaze_heads) and row["mode"] == "boost_suppress"
    assert row["strength"] == 1e4


def test_baseline_copy_is_a_miss_even_if_the_judge_says_hit(fake, strips):
    """An unchanged answer cannot count for a non-default target, even when a (noisy) judge names the target."""
    from gazekit.evaluate import vqa
    from gazekit.judges import Verdict
    vlm, scores = fake
    calls = []

    def noisy_judge(answer, strip, refs=None):
        # the protocol judges the unsteered answer first, then the random condition's targets 1..6 in order:
        # say panel 1 first (the default), then exactly the target each time
        calls.append(answer)
        return Verdict(1 if len(calls) == 1 else len(calls) - 1)

    res = vqa(vlm, strips[:1], scores, conditions=("unsteered", "random"), judge=noisy_judge, progress=False,
              control_seeds=1)
    r = res.table[res.table.condition == "random"].set_index("target")
    assert (r["answer"] == r["unsteered_answer"]).all()  # the random heads changed nothing
    assert list(r["verdict_panel"]) == [1, 2, 3, 4, 5, 6]  # the judge "agrees" with every target ...
    assert list(r["baseline_copy"]) == [False, True, True, True, True, True]
    assert list(r["hit"]) == [True, False, False, False, False, False]  # ... but only the default one counts
    assert res.accuracy("random") == pytest.approx(1 / 6) and res.accuracy("random", nondefault=True) == 0


def test_resume_skips_done_work(fake, strips, tmp_path):
    from gazekit.evaluate import vqa
    vlm, scores = fake
    log = tmp_path / "run.jsonl"
    first = vqa(vlm, strips, scores, log=log, progress=False)
    n_lines = len(log.read_text().splitlines())
    calls = vlm.calls
    again = vqa(vlm, strips, scores, log=log, progress=False)
    assert vlm.calls == calls  # nothing regenerated
    assert len(log.read_text().splitlines()) == n_lines  # nothing re-judged or duplicated
    assert _cmp(first.table).equals(_cmp(again.table))


def test_sharded_runs_union_equals_whole_run(fake, strips, tmp_path):
    from gazekit.evaluate import vqa
    vlm, scores = fake
    whole = vqa(vlm, strips, scores, progress=False)
    parts, keys = [], []
    for i in range(3):
        path, _ = shard_log_paths(tmp_path, (i, 3))
        with RunLog(path) as log:
            r = vqa(vlm, strips, scores, log=log, shard=(i, 3), progress=False)
        parts.append(r.table)
        keys.append({row["key"] for row in read_rows(path)})
    assert all(not (keys[a] & keys[b]) for a in range(3) for b in range(a + 1, 3))  # disjoint work
    import pandas as pd
    assert _cmp(pd.concat(parts)).equals(_cmp(whole.table))
    # the merge: an unsharded call reading the shard logs generates nothing new
    path, others = shard_log_paths(tmp_path, None)
    calls = vlm.calls
    with RunLog(path, read_also=others) as log:
        merged = vqa(vlm, strips, scores, log=log, progress=False)
    assert vlm.calls == calls and _cmp(merged.table).equals(_cmp(whole.table))


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import fakes
    from gazekit.comics import synthetic
    from gazekit.evaluate import protocols, vqa
    import contextlib

    @contextlib.contextmanager
    def steer(vlm, heads, target, **kw):
        vlm.state = (heads if isinstance(heads, str) else [tuple(h) for h in heads], target)
        try:
            yield
        finally:
            vlm.state = None

    protocols._steer = steer
    vlm = fakes.FakeVLM(delay=float(sys.argv[2]))
    res = vqa(vlm, synthetic(4, seed=3), fakes.fake_scores(vlm), log=sys.argv[1], progress=False, control_seeds=1)
    print("done", len(res.table))
""")


def test_resume_after_a_real_kill_loses_and_duplicates_nothing(tmp_path):
    script = tmp_path / "run_vqa.py"
    script.write_text(KILL_SCRIPT.format(here=str(HERE)))
    log = tmp_path / "run.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(log), "0.05"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill mid-run: after some rows, well before the 4 * 19 generations
        if log.exists() and len(log.read_bytes().splitlines()) >= 25:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = read_rows(log)
    gens_before = [r["key"] for r in before if r["kind"] == "generation"]
    assert 0 < len(gens_before) < 4 * 19
    out = subprocess.run([sys.executable, str(script), str(log), "0"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done 96" in out.stdout  # 4 strips x 6 targets x 4 conditions
    rows = read_rows(log)
    gens = [r["key"] for r in rows if r["kind"] == "generation"]
    judged = [r["key"] for r in rows if r["kind"] == "judgement"]
    assert len(gens) == len(set(gens)) == 4 * 19  # none lost, none twice
    assert len(judged) == len(set(judged)) == 4 * 19
    assert gens[:len(gens_before)] == gens_before  # the killed run's rows were kept, not redone
