"""Smoke test of the benchmark (`python -m benchmarks`, benchmarks/bench.py, outside the installed package) on the
tiny random Qwen2-VL of `gazekit.testing`: the whole code path, the JSON it writes, and that the reference recipe
and gazekit's discovery give the same scores. No timing thresholds (CI machines vary)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench  # noqa: E402  (the checkout's top-level benchmarks/ package)

MEASURES = ("discovery_time", "memory", "score_diff", "capture_overhead", "steering", "quant_bytes", "eval_vqa",
            "eval_narration")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # in-process (isolate=False) keeps the test short; the CLI runs every job in a fresh process
    res = bench.run(["qwen2vl-tiny"], repeats=1, gen_tokens=2, out=str(out), isolate=False, progress=False,
                    verbose=False, device="cpu")
    return res, json.loads(out.read_text())


def test_json_has_every_measure_with_ratio_and_device(result):
    res, written = result
    assert written["device"]["device"] == "cpu" and written["device"]["torch_threads"] == 1
    assert written["device"]["cpu"] and written["device"]["torch"] == torch.__version__
    assert written["clock"] == "cpu"
    m = written["models"]["qwen2vl-tiny"]
    assert m["info"]["n_layers"] == 2 and m["info"]["n_heads"] == 4 and m["info"]["image_tokens"] > 0
    for key in MEASURES:
        assert "ratio" in m[key], key
        assert np.isfinite(m[key]["ratio"]), key
        assert written["ratios"]["qwen2vl-tiny"][key] == m[key]["ratio"]
    # the ratios are the medians' ratios (one repeat here), not something else
    d = m["discovery_time"]
    assert d["ratio"] == pytest.approx(d["reference_s"] / d["gazekit_s"])
    assert d["reference_s"] == pytest.approx(d["reference_runs"]["cpu"][0])
    assert d["strips"] == bench.DEFAULT_STRIPS["qwen2vl-tiny"] == 2
    assert d["strips_per_forward"] >= 1
    mem = m["memory"]
    assert mem["reference_mb"] > 0 and mem["gazekit_mb"] > 0 and mem["plain_forward_mb"] > 0
    assert mem["image_encoding_mb"] > 0
    assert mem["best_possible_ratio"] == pytest.approx(mem["reference_mb"] / mem["image_encoding_mb"])
    assert mem["plain_forward_ratio"] == pytest.approx(mem["reference_mb"] / mem["plain_forward_mb"])
    # "unreachable" is only ever said of a missed target whose bound is below it
    assert ("unreachable" in mem) == (not mem["met"] and mem["best_possible_ratio"] < 5)
    whole = m["memory_whole_job"]
    assert whole["strips"] == 2 and whole["reference_mb"] > 0 and whole["gazekit_mb"] > 0
    st = m["steering"]
    assert st["new_tokens"] == 2 and st["heads"] >= 1
    # targets: the stated ones, and "met" follows from the ratio
    assert m["discovery_time"]["target"] == ">= 4" and m["memory"]["target"] == ">= 5"
    assert m["score_diff"]["target"] == "<= 1e-05" and m["quant_bytes"]["target"] == "<= 0.35"
    assert m["discovery_time"]["met"] == (d["ratio"] >= 4)
    assert m["capture_overhead"]["target"] is None  # stated for the mid-size config only
    assert written["all_targets_met"] == all(v.get("met") is not False for v in m.values() if isinstance(v, dict))


def test_reference_and_gazekit_scores_agree(result):
    res, written = result
    sd = written["models"]["qwen2vl-tiny"]["score_diff"]
    assert sd["max_abs"] <= 1e-5
    assert sd["max_score"] > 1e-3  # not vacuous: the 6x6 matrices hold real attention mass
    assert sd["met"] is True


def test_4bit_bytes_are_counted_from_the_loaded_layers(result):
    res, written = result
    q = written["models"]["qwen2vl-tiny"]["quant_bytes"]
    size = bench.TINY
    # every Linear of the 2-layer text model is converted: q, k, v, o, gate, up, down per layer
    assert q["converted_layers"] == 7 * size.layers
    hd = size.hidden // size.heads
    per_layer = (size.hidden * size.hidden * 2 + 2 * size.hidden * size.kv_heads * hd
                 + 3 * size.hidden * size.intermediate)
    assert q["converted_fp16_bytes"] == 2 * size.layers * per_layer
    # NF4 packs two weights per byte; the quantisation state adds a little
    assert 0.25 <= q["ratio"] < 0.5


def test_table_lists_each_measure(result):
    res, _ = result
    table = bench.format_table(res)
    for label in ("discovery time", "extra peak memory", "floor: inputs + image encoding", "floor: 1 plain forward", "whole job", "max |score diff|",
                  "capture vs plain", "steered gen", "4-bit / fp16"):
        assert label in table


def test_reference_recipe_matches_output_attentions_by_hand():
    """The baseline itself against a by-hand reading of `output_attentions` (sum of the last row per panel)."""
    from gazekit._reference import reference_row
    from gazekit.regions import panel_question
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = bench.build_qwen_folder(bench.TINY, tmp)
        vlm = bench._load_subject("qwen2vl-tiny", folder, "cpu", "float32")
    strip = bench._strips_for("qwen2vl-tiny")[0]
    prep = vlm.prepare(strip, panel_question(2))
    with pytest.raises(RuntimeError, match="eager"):
        reference_row(vlm.model, dict(prep), prep.regions)
    vlm.model.set_attn_implementation("eager")
    got = reference_row(vlm.model, dict(prep), prep.regions)
    with torch.no_grad():
        att = vlm.model(**prep, output_attentions=True).attentions
    for l, a in enumerate(att):
        for r, pos in enumerate(prep.regions):
            assert got[l, :, r] == pytest.approx(a[0, :, -1, pos.tolist()].sum(-1).double().numpy(), abs=1e-12)
    assert len(got) == vlm.n_layers


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="qwen2vl-mid"):
        bench.run(["bogus"], out=None, verbose=False, progress=False)


def test_memory_job_runs_in_a_fresh_process(tmp_path):
    """The CLI's path: one job through `python -m benchmarks.bench --_worker` in its own process."""
    folder = bench.build_qwen_folder(bench.TINY, tmp_path / "model")
    spec = dict(subject="qwen2vl-tiny", task="gazekit", folder=str(folder), device="cpu", dtype="float32", threads=1,
                repeats=1, capture_repeats=1, gen_repeats=1, gen_tokens=2, tick=lambda: None)
    got = bench._run_job(spec, True, tmp_path)
    assert got["memory_bytes"] > 0 and got["strips"] == 1
    assert "VmHWM" in got["memory_how"] or "psutil" in got["memory_how"]
    assert np.array(got["matrix"]).shape == (bench.TINY.layers, bench.TINY.heads, 6, 6)
    plain = bench._run_job(dict(spec, task="plain", tick=lambda: None), True, tmp_path)
    assert plain["memory_bytes"] > 0 and plain["matrix"] is None
    encode = bench._run_job(dict(spec, task="encode", tick=lambda: None), True, tmp_path)
    assert encode["memory_bytes"] > 0 and encode["matrix"] is None


@pytest.mark.skipif(not bench._can_fork(), reason="the fork server is Linux-only")
def test_fork_server_runs_each_memory_job_in_its_own_fresh_child(tmp_path):
    """The CLI's path on Linux: memory jobs forked from one server that has only imported modules — a new
    process per job (its own pid), results as from a `--_worker` process, a failing job reported with its error."""
    import os

    folder = bench.build_qwen_folder(bench.TINY, tmp_path / "model")
    spec = dict(subject="qwen2vl-tiny", task="gazekit", folder=str(folder), device="cpu", dtype="float32", threads=1,
                repeats=1, capture_repeats=1, gen_repeats=1, gen_tokens=2)
    server = bench._ForkServer(bench._job_env(spec), tmp_path)
    try:
        got = bench._run_job(dict(spec, tick=lambda: None), True, tmp_path, server)
        again = bench._run_job(dict(spec, tick=lambda: None), True, tmp_path, server)
        alone = bench._run_job(dict(spec, tick=lambda: None), True, tmp_path)  # its own `--_worker` process
        assert len({got["pid"], again["pid"], alone["pid"], os.getpid(), server._proc.pid}) == 5
        assert got["memory_bytes"] > 0 and "MALLOC_MMAP_THRESHOLD_=65536" in got["memory_how"]
        np.testing.assert_array_equal(np.array(got["matrix"]), np.array(alone["matrix"]))
        with pytest.raises(RuntimeError, match="no_such_model.*failed"):
            bench._run_job(dict(spec, subject="no_such_model", tick=lambda: None), True, tmp_path, server)
        assert bench._run_job(dict(spec, task="plain", tick=lambda: None), True, tmp_path, server)["matrix"] is None
    finally:
        server.close()
    assert server._proc.returncode == 0


def test_gpu_and_in_process_memory_jobs_get_no_fork_server(tmp_path):
    """CUDA does not survive a fork once anything has queried it: GPU jobs start their own interpreter."""
    spec = dict(task="memory", threads=1, device="cuda")
    with bench._memory_server(True, spec, tmp_path) as server:
        assert server is None
    with bench._memory_server(False, dict(spec, device="cpu"), tmp_path) as server:
        assert server is None


def test_tensor_peak_counts_live_storages_once():
    """The tensors-only figure against hand-counted storages: views and in-place results add nothing, freed
    storages stop counting, the peak is the most alive at once."""
    with bench._TensorPeak() as tp:
        a = torch.ones(1000)              # 4000 B
        b = a.view(10, 100).t()           # views: same storage
        a.mul_(2.0)                       # in place: same storage
        c = torch.zeros(500, dtype=torch.float64)  # 4000 B -> 8000 alive
        del c
        d = torch.empty(250)              # 1000 B after c was freed -> 5000 alive
        e = a + 1                         # 4000 B -> 9000 alive: the peak
        del e, d
        f = torch.empty(10)               # 40 B
    assert tp.peak == 9000
    assert b.data_ptr() == a.data_ptr() and f.numel() == 10
    with bench._TensorPeak() as tp:
        pass
    assert tp.peak == 0


def test_memory_block_reports_tensor_peaks(result):
    res, written = result
    mem = written["models"]["qwen2vl-tiny"]["memory"]
    t = mem["tensors_mb"]
    assert set(t) == {"reference", "gazekit", "plain", "encode"}
    # the reference holds every layer's full attention map, which a plain forward never makes
    assert t["reference"] > t["plain"] > t["encode"] > 0


def test_evaluation_throughput_compares_the_same_answers(result):
    res, written = result
    m = written["models"]["qwen2vl-tiny"]
    n = bench.EVAL_STRIPS["qwen2vl-tiny"]
    for protocol in bench.EVAL_PROTOCOLS["qwen2vl-tiny"]:
        e = m[f"eval_{protocol}"]
        # every strip x 6 targets x each condition is a judged pair (the random control for 3 seeds); one unsteered
        # generation per strip, and a control draw that repeats another's heads reuses its generations
        assert e["pairs"] == n * 6 * (1 + 1 + 3)
        assert n * (1 + 6 * 2) <= e["generations"] <= n * (1 + 6 * 4)
        assert e["same_answers"] is True  # greedy float32: batching must not change a single answer
        assert e["ratio"] == pytest.approx(e["one_at_a_time_s"] / e["batched_s"])
        assert e["batched_pairs_per_s"] == pytest.approx(e["pairs"] / e["batched_s"])
        assert e["target"] is None  # targets are stated for the organism and the mid-size config
        cheapest = min(e["prefill_s"], e["prefill_per_batched_row_s"])
        assert e["best_possible_ratio"] == pytest.approx(e["one_at_a_time_s"] / (e["generations"] * cheapest))
    assert "vqa pairs/s" in bench.format_table(res)


def test_targets_per_model():
    assert bench.target_for("eval_vqa", "organism") == ("min", 5.0)
    assert bench.target_for("eval_vqa", "qwen2vl-mid") == ("min", 1.5)
    assert bench.target_for("memory", "organism") is None  # bounded by construction: information
    assert bench.target_for("memory", "qwen2vl-2b-dims") == ("min", 10.0)
    assert bench.target_for("discovery_time", "qwen2vl-2b-dims") == ("min", 6.0)
    assert bench.target_for("capture_overhead", "qwen2vl-tiny") is None


def test_the_benchmark_is_not_packaged_and_the_builders_are():
    """pyproject's package list (what the wheel holds) has gazekit and gazekit.testing, not the benchmark."""
    import tomllib
    from pathlib import Path

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(root), include=cfg["include"], exclude=cfg.get("exclude", ()))
    assert "gazekit" in packages and "gazekit.evaluate" in packages
    assert not [p for p in packages if p.split(".")[0] in ("benchmarks", "tests")], packages
    assert (root / "gazekit" / "testing.py").exists() and not (root / "gazekit" / "bench.py").exists()
