"""The benchmark — gazekit against the paper's reference recipe, side by side, on your hardware.

It lives in a source checkout (`benchmarks/`, not in the installed package); from the checkout's root:

    make bench                                            # python -m benchmarks, in the project's .venv
    python -m benchmarks --quick --no-evaluation          # ~4.5 min: 2 repeats, 16-token generations
    python -m benchmarks                                  # 3 repeats, 32 tokens; with the evaluation pairs ~20-40 min
    python -m benchmarks --models qwen2vl-2b-dims --repeats 1   # real dimensions: ~90 min on one CPU thread
    python -m benchmarks --device cuda                    # on a GPU (default when one is visible)

(`python benchmarks/bench.py ...` is the same), or from a notebook started in the checkout:
`from benchmarks import bench; bench.run(quick=True)` (returns the dict it writes as JSON). The exit status is 0
even when a target is missed: the table and the JSON's "missed" list say which.

Per model — the embedded organism (skipped, with a message, while its weights are absent; `--organism-dir` points
at another one) and a mid-size random-weight Qwen2-VL (~77M parameters, ~310 MB in float32; a 1950x256 strip of
six 320x256 panels gives a ~680-token prompt), built offline by `gazekit.testing` (the test fixtures' small
byte-level BPE and Qwen chat template, and the real Qwen2VLImageProcessorPil) — it measures:

- discovery time per strip, over a set of strips (`DEFAULT_STRIPS`: 16 on the organism, 1 on the mid-size model;
  `--strips`): the reference recipe (`gazekit._reference`: eager attention in the whole model, as
  `from_pretrained(attn_implementation="eager")` gives; `output_attentions=True`; six full forwards per strip, one
  strip at a time; the last row of every layer summed over each panel) against `gazekit.discover` with its defaults
  (each image prepared once, the six question suffixes packed after the shared image prefix, last rows only,
  strips of one layout batched up to 1024 tokens per forward). Both include preparing the inputs;
- extra peak memory of one strip. CPU: each method runs once in its own fresh process (on Linux forked from one
  server process that has imported torch, transformers and gazekit and computed nothing, which saves ~5 s of
  imports per job; elsewhere, and on a GPU, a new interpreter), loads the model, warms up on a small
  strip (which pages in weights and kernels); peak RSS minus RSS just before (the kernel's peak counter is reset
  through /proc/self/clear_refs, or RSS is sampled with psutil where that file is missing), with glibc told to give
  freed blocks back at once (MALLOC_MMAP_THRESHOLD_) so that allocator slack is not counted. GPU:
  `torch.cuda.max_memory_allocated` minus what was allocated before. More figures, for information, measured the
  same way: preparing one prompt's inputs and encoding its image (the vision tower, nothing else) — what every
  discovery method that uses the model's processor and vision tower as they are must at least do, so reference /
  that bounds the ratio such a method can reach (a missed target above that bound is reported as unreachable, and
  still missed; a method that split the vision tower's own computation into pieces is not bounded by it, and
  none is tried here); one plain sdpa forward of one prompt with nothing recorded; the whole timed job (batching
  strips costs memory); and on a CPU the peak of torch tensor storages alive at once in each one-strip call
  (counted once, in the first fresh process: it does not vary), which leaves out the allocators' pages and arenas
  that RSS also counts;
- the largest absolute difference between the two methods' 6x6 matrices (target <= 1e-5);
- capture overhead: `capture` against a plain uncaptured sdpa forward on the same prepared input;
- steered (top `gazekit.evaluate.default_k` heads by gaze score, ~9% of heads; panel 3) against unsteered greedy generation of the same number of tokens
  (min_new_tokens = max_new_tokens);
- 4-bit (bitsandbytes NF4 through `gazekit.load(path, quantize="4bit")`) against fp16 bytes of the layers
  bitsandbytes converts (quantisation state included), and of the whole model for information;
- evaluation throughput (`--no-evaluation` skips it): judged (strip, target) pairs per second of
  `gazekit.evaluate.vqa` (and `narration` on the organism) with the conditions unsteered / top / random, the
  protocols' default batching (rows of one condition with different targets in one generate call, each steered
  toward its own target) against `batch_size=1`, on strips other than the ones discovery used (`EVAL_STRIPS`:
  organism 8, mid-size 1); the two must give identical answers. The floor printed under it: every generation's
  prefill at the cheapest price per row measured (one row alone, or a batch of 8 rows) — rows steered toward
  different targets share no prefill, so one at a time / that sum bounds what batching can reach (a missed target
  above the bound is reported as unreachable).

`--real-dims` adds `qwen2vl-2b-dims`: random weights at Qwen2-VL-2B's published dimensions (28 layers, 12 query
heads, hidden 1536, vocabulary 151,936, a 32-block vision tower of width 1280; ~2.2B parameters, 8.9 GB in float32)
and a ~730-token strip prompt; discovery time and extra peak memory only (targets 6x and 10x), one strip. Slow on a
CPU: each reference discovery is six forwards of the whole model.

Timings alternate the two methods of each pair inside one process; ratios are of medians. On a CPU with one torch
thread (the default) the clock is the process's CPU time, which other programs on a shared machine barely disturb;
otherwise wall-clock time. Both clocks are in the JSON. Everything runs in float32 by default, so the score
difference measures the attention computation, not rounding.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

if not __package__:  # run as a file (python benchmarks/bench.py): use the checkout's gazekit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gazekit.testing import QWEN2_VL_TINY, QwenSize  # noqa: E402

SUBJECTS = ("organism", "qwen2vl-mid", "qwen2vl-tiny", "qwen2vl-2b-dims")
DEFAULT_MODELS = ("organism", "qwen2vl-mid")
# Strips in the timed discovery job. Discovery always runs over a set of strips (the paper: 500); gazekit batches
# strips of one token layout up to `discover(batch_tokens=1024)` tokens per forward — 9 organism strips, but one
# mid-size strip (~720 tokens packed), so one strip there measures the same thing in a seventh of the time.
DEFAULT_STRIPS = {"organism": 16, "qwen2vl-mid": 1, "qwen2vl-tiny": 2, "qwen2vl-2b-dims": 1}
# the real-dimension model measures discovery only (time, memory, scores): its generations would take minutes each
REAL_DIMS_ONLY = ("qwen2vl-2b-dims",)

# measure -> (kind, {model: value}); "*" is every model not named. "min": ratio must be >= value; "max": <= value;
# a model with no value (or None) gets the measure for information only.
TARGETS = {
    "discovery_time": ("min", {"*": 4.0, "qwen2vl-2b-dims": 6.0}),
    # the organism's memory ratio is bounded near 2-4x by construction (inputs + image encoding alone are a large
    # share of its 1 MB): information there, not a target
    "memory": ("min", {"*": 5.0, "organism": None, "qwen2vl-2b-dims": 10.0}),
    "score_diff": ("max", {"*": 1e-5}),
    "capture_overhead": ("max", {"qwen2vl-mid": 0.15}),
    "steering": ("max", {"qwen2vl-mid": 1.15}),
    "quant_bytes": ("max", {"*": 0.35}),
    # judged (strip, target) pairs per second, batched (the protocols' default) / one generation at a time
    "eval_vqa": ("min", {"organism": 5.0, "qwen2vl-mid": 1.5}),
    "eval_narration": ("min", {}),
}


def target_for(measure: str, model: str) -> Optional[tuple]:
    """(kind, value) of `measure`'s target on `model`, or None where it is information only."""
    kind, values = TARGETS[measure]
    value = values.get(model, values.get("*"))
    return None if value is None else (kind, value)


# ------------------------------------------------------------------------------------------ offline Qwen2-VL
# The models are built by `gazekit.testing` (the tests' fixtures: one offline tokenizer and chat template per family);
# only their sizes are the benchmark's.

# Mid-size: ~77M parameters (~310 MB in float32). Panels 320x256 make a 1950x256 strip -> 9x70 = 630 merged image
# tokens, ~680 prompt tokens with the question. Widths are multiples of 64 (in) and 32 (out) so bitsandbytes' CPU
# 4-bit kernel accepts every converted Linear.
MID = QwenSize(hidden=768, intermediate=2048, layers=12, heads=12, kv_heads=2, vision_depth=2, vision_dim=256,
               vision_heads=4, panel_w=320, panel_h=256, max_image_tokens=2048, max_positions=4096)
# Tiny: the test suite's Qwen2-VL fixture, for the smoke test (seconds).
TINY = QWEN2_VL_TINY
# Real dimensions: Qwen2-VL-2B-Instruct's published config (28 layers, 12 query / 2 key-value heads, hidden 1536,
# MLP 8960, vocabulary 151,936; vision tower 32 blocks of 1280 with 16 heads, MLP ratio 4) with random weights
# (~2.2B parameters, ~8.9 GB in float32). Panels 352x256 make a 2142x256 strip -> 9x76 = 684 merged image tokens,
# ~730 prompt tokens. Only discovery time and memory are measured on it (`REAL_DIMS_ONLY`); opt-in (`--real-dims`).
QWEN2VL_2B = QwenSize(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vision_depth=32,
                      vision_dim=1280, vision_heads=16, panel_w=352, panel_h=256, vision_mlp_ratio=4, vocab=151936,
                      max_image_tokens=2048, max_positions=4096)
_QWEN_SIZES = {"qwen2vl-mid": MID, "qwen2vl-tiny": TINY, "qwen2vl-2b-dims": QWEN2VL_2B}


def build_qwen_folder(size: QwenSize, folder, seed: int = 0) -> Path:
    """Write a random-weight Qwen2-VL of `size` (safetensors) and its processor to `folder`
    (`gazekit.testing.save_fixture`); returns the folder.

    size: a `gazekit.testing.QwenSize`; folder: where to write; seed: torch seed of the weights."""
    from gazekit.testing import save_fixture

    _quiet_transformers()
    return save_fixture("qwen2_vl", folder, seed=seed, size=size)


def _strips_for(subject: str, n: int = 1) -> list:
    """The strips each model is measured on: synthetic comics, at the size the model's prompt needs."""
    from gazekit.comics import synthetic
    from gazekit.regions import Strip

    bases = synthetic(n, seed=0)
    if subject == "organism":
        return bases
    size = _QWEN_SIZES[subject]
    return [Strip.from_panels([b.panel(k).resize((size.panel_w, size.panel_h)) for k in range(1, 7)],
                              captions=b.captions, height=size.panel_h) for b in bases]


def _organism_missing(folder=None) -> Optional[str]:
    from gazekit import organism

    path = Path(folder or organism.WEIGHTS_DIR) / "model.safetensors"
    if not path.exists():
        return (f"organism weights not found at {path} (train them with `python -m gazekit.organism.train`); "
                "skipped")
    return None


def _load_subject(subject: str, folder, device: str, dtype: str):
    import torch

    import gazekit

    dt = getattr(torch, dtype)
    if subject == "organism" and folder:  # an organism trained elsewhere (python -m gazekit.organism.train --out)
        from gazekit.organism import load_organism

        model, processor = load_organism(str(folder))
        vlm = gazekit.load(model.to(dt), processor)
    elif subject == "organism":
        vlm = gazekit.load(dtype=dt)
    else:
        from transformers import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration.from_pretrained(str(folder), dtype=dt, attn_implementation="sdpa",
                                                                use_safetensors=True, local_files_only=True)
        from gazekit.testing import load_processor

        vlm = gazekit.load(model, load_processor("qwen2_vl", folder))
    vlm.model.to(device)
    return vlm


# -------------------------------------------------------------------------------------------------- measuring
def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


_CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}


def _timed(fn: Callable, device, clock: str = "wall"):
    """(result, seconds). clock="cpu": this process's CPU time — on a CPU with one torch thread that is the work
    done, unaffected by other programs competing for the cores (wall-clock time is recorded beside it)."""
    _sync(device)
    tick = _CLOCK[clock]
    t0 = tick()
    out = fn()
    _sync(device)
    return out, tick() - t0


def _timed2(fn: Callable, device):
    """(result, wall seconds, CPU seconds)."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class _RSSPeak:
    """Peak resident memory above the level at entry, for the current process (CPU)."""

    def __enter__(self):
        gc.collect()
        with contextlib.suppress(Exception):  # return freed heap pages to the OS so they cannot hide new allocations
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the kernel's peak-RSS counter (VmHWM) to the current RSS
            self.how = "VmHWM after clear_refs reset, minus VmRSS before"
            self.base = _proc_status_kb("VmRSS") * 1024
        except OSError:
            import threading

            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss
            self.peak = self.base
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
            self.how = "psutil RSS sampled every 1 ms, minus RSS before"
        if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            self.how += f", MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}"
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            self.extra = _proc_status_kb("VmHWM") * 1024 - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, __import__("psutil").Process().memory_info().rss)
            self.extra = self.peak - self.base
        return False


class _TensorPeak:
    """Peak bytes of torch tensor storages created inside the block and alive at the same time (for information,
    next to RSS): what a method's tensors need, without the page and arena granularity of the allocators that RSS
    also counts — at the organism's scale those move a figure by a quarter of a megabyte. Views and in-place results
    share their input's storage and are not counted again; memory that one aten kernel allocates and frees inside
    itself (e.g. sdpa's work blocks), numpy arrays and Python objects are not seen."""

    def __enter__(self):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self
        self.live: dict = {}  # storage id -> (weak ref, bytes)
        self.now = self.peak = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                for key in [k for k, (ref, _) in tracker.live.items() if ref.expired()]:
                    tracker.now -= tracker.live.pop(key)[1]
                out = func(*args, **(kwargs or {}))
                seen = {StorageWeakRef(a.untyped_storage()).cdata for a in tree_leaves((args, kwargs))
                        if isinstance(a, torch.Tensor)}
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        ref = StorageWeakRef(t.untyped_storage())
                        if ref.cdata not in seen and ref.cdata not in tracker.live:
                            tracker.live[ref.cdata] = (ref, t.untyped_storage().nbytes())
                            tracker.now += tracker.live[ref.cdata][1]
                tracker.peak = max(tracker.peak, tracker.now)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self.live.clear()
        return False


def _peak_extra(fn: Callable, device):
    """(result, extra peak bytes, seconds, how it was measured)."""
    import torch

    if str(device).startswith("cuda"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out, secs = _timed(fn, device)
        return out, int(torch.cuda.max_memory_allocated() - base), secs, "torch.cuda.max_memory_allocated - before"
    with _RSSPeak() as p:
        out, secs = _timed(fn, device)
    return out, int(p.extra), secs, p.how


def _gazekit_matrix(vlm, strips) -> np.ndarray:
    import gazekit

    return gazekit.discover(vlm, strips, progress=False).matrix


def _reference_matrix(vlm, strips) -> np.ndarray:
    """The reference recipe over strips, one at a time (the paper's loop), averaged like `discover`."""
    from gazekit._reference import reference_strip_matrix

    _set_impl(vlm.model, "eager")  # the reference recipe loads the model with attn_implementation="eager"
    try:
        return np.mean([reference_strip_matrix(vlm, s) for s in strips], axis=0)
    finally:
        _set_impl(vlm.model, "sdpa")


def _plain_forward(vlm, strips) -> None:
    """The memory floor: prepare one strip's first panel question and run one plain sdpa forward, nothing
    recorded. Any discovery method that runs the model's unmodified forward on a prompt needs at least this."""
    from gazekit.regions import panel_question

    vlm.model(**vlm.prepare(strips[0], panel_question(1)), use_cache=False)
    return None


def _encode_image(vlm, strips) -> None:
    """The strictest memory floor: prepare one strip's inputs and run the vision tower on its image (the model's
    `get_image_features`), nothing else. Every discovery method that uses the model's processor and vision tower as
    they are must at least do this."""
    import inspect

    from gazekit.regions import panel_question

    prep = vlm.prepare(strips[0], panel_question(1))
    fn = vlm.model.get_image_features
    params = inspect.signature(fn).parameters
    fn(**{k: v for k, v in prep.items() if k in params and k != "input_ids"})
    return None


# what each memory job runs, on one strip (the "-all" jobs, for information, run theirs on every strip)
_MEMORY_METHODS = {"reference": _reference_matrix, "gazekit": _gazekit_matrix, "plain": _plain_forward,
                   "encode": _encode_image}
_ONE_STRIP_MEMORY_JOBS = tuple(_MEMORY_METHODS)


def _set_impl(model, name: str):
    model.set_attn_implementation(name)


def _describe(vlm, subject, strip) -> dict:
    from gazekit.regions import panel_question

    prep = vlm.prepare(strip, panel_question(1))
    return {"model": vlm.name if subject == "organism" else f"random-weight Qwen2VLForConditionalGeneration "
                                                           f"({subject})",
            "family": vlm.family, "n_layers": vlm.n_layers, "n_heads": vlm.n_heads,
            "params_M": round(sum(p.numel() for p in vlm.model.parameters()) / 1e6, 2),
            "prompt_tokens": prep.prompt_len, "image_tokens": int(prep.image_positions.numel()),
            "strip_px": list(strip.image.size)}


def _steer_heads(vlm, scores: np.ndarray) -> list:
    """Top-k heads by gaze score, k = `gazekit.evaluate.default_k(vlm)`: the model's recommended k, else the
    paper's 100 of 1152 heads scaled to this model."""
    from gazekit.evaluate import default_k

    k = default_k(vlm)
    flat = np.argsort(-scores.ravel(), kind="stable")[:k]
    return [(int(i) // vlm.n_heads, int(i) % vlm.n_heads) for i in flat]


def _quiet_transformers():
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _warm_strip(strip):
    """A small copy of the strip: runs every code path once (lazy imports, kernels, weights paged in from the
    safetensors mmap) so that memory measured afterwards is what the method itself allocates."""
    from gazekit.regions import Strip

    return Strip.from_panels([strip.panel(k).resize((64, 64)) for k in range(1, 7)], height=64)


def _alternate(fns: dict, repeats: int, device, tick=None, warm_up: bool = True) -> dict:
    """Run each of two callables once untimed (unless warm_up=False), then `repeats` times, alternating which goes
    first; {name: {"wall": [...], "cpu": [...], "results": [...]}}."""
    names = list(fns)
    runs = {n: {"wall": [], "cpu": [], "results": []} for n in names}
    for n in names if warm_up else ():  # one untimed run each: kernels chosen for new shapes, lazy imports, caches
        fns[n]()
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            res, w, c = _timed2(fns[n], device)
            runs[n]["wall"].append(w)
            runs[n]["cpu"].append(c)
            runs[n]["results"].append(res)
        if tick:
            tick()
    return runs


def _worker(spec: dict) -> dict:
    """One measurement job, run in a fresh process (or in-process with isolate=False)."""
    import torch

    _quiet_transformers()
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    subject, task = spec["subject"], spec["task"]
    if task == "quant":
        return _quant_bytes(spec["folder"], device)
    vlm = _load_subject(subject, spec.get("folder"), device, spec["dtype"])
    if task == "evaluation":
        with torch.no_grad():
            return {"evaluation": _evaluation(vlm, subject, spec)}
    strips = _strips_for(subject, spec.get("strips", 1))
    strip = strips[0]
    out = {"info": _describe(vlm, subject, strip)}

    with torch.no_grad():
        # memory: one call of one method in this fresh process, after a warm-up on small strips; "-all" jobs
        # measure the whole timed job (every strip), the others one strip
        fn = _MEMORY_METHODS.get(task.split("-")[0])
        if fn is not None:
            job = strips if task.endswith("-all") else strips[:1]
            fn(vlm, [_warm_strip(s) for s in job])
            m, extra, secs, how = _peak_extra(lambda: fn(vlm, job), device)
            out.update(matrix=None if m is None else m.tolist(), memory_bytes=extra, memory_how=how,
                       first_run_s=secs, strips=len(job), pid=os.getpid())
            if spec.get("tensors") and device == "cpu":  # once more, tensors only (a GPU's figure already is)
                with _TensorPeak() as tp:
                    fn(vlm, job)
                out["tensor_bytes"] = tp.peak
            return out
        # task == "timing": every timing, alternating the two methods of each pair in this one process
        if subject in REAL_DIMS_ONLY:
            warm = [_warm_strip(s) for s in strips]
            _reference_matrix(vlm, warm)
            _gazekit_matrix(vlm, warm)
        runs = _alternate({"reference": lambda: _reference_matrix(vlm, strips),
                           "gazekit": lambda: _gazekit_matrix(vlm, strips)}, spec["repeats"], device, spec["tick"],
                          # real dimensions: runs of minutes, where first-call costs are noise; warm on a small strip
                          warm_up=subject not in REAL_DIMS_ONLY)
        diffs = [float(np.abs(a - b).max()) for a, b in zip(runs["reference"]["results"], runs["gazekit"]["results"])]
        out["discovery"] = {k: {c: [t / len(strips) for t in v[c]] for c in ("wall", "cpu")} for k, v in runs.items()}
        out["discovery"]["same_process_diff"] = max(diffs)
        out["discovery"]["strips"] = len(strips)
        import gazekit

        out["discovery"]["strips_per_forward"] = gazekit.discover(vlm, strips, progress=False).meta.get(
            "strips_per_forward")
        m = runs["gazekit"]["results"][-1]
        if subject in REAL_DIMS_ONLY:
            return out

        from gazekit.capture import capture_prepared
        from gazekit.regions import panel_question

        prep = vlm.prepare(strip, panel_question(1))
        runs = _alternate({"plain": lambda: vlm.model(**prep, use_cache=False) and None,
                           "capture": lambda: capture_prepared(vlm, prep)}, spec["capture_repeats"], device)
        out["capture"] = {k: {c: v[c] for c in ("wall", "cpu")} for k, v in runs.items()}
        out["capture"]["prompt_tokens"] = prep.prompt_len
        spec["tick"]()

        heads = _steer_heads(vlm, np.einsum("lhkk->lh", m))
        N = spec["gen_tokens"]
        gen = dict(max_new_tokens=N, min_new_tokens=N)
        prep = vlm.prepare(strip, gazekit.VQA_QUESTION)

        def steered():
            with gazekit.steer(vlm, heads, target=3):
                return vlm.generate(prep, **gen)

        runs = _alternate({"unsteered": lambda: vlm.generate(prep, **gen), "steered": steered},
                          spec["gen_repeats"], device)
        lengths = {int(ids.shape[1]) - prep.prompt_len for v in runs.values() for ids in v["results"]}
        if lengths != {N}:
            raise RuntimeError(f"generation lengths differ from {N}: {sorted(lengths)}")
        out["steering"] = {k: {c: v[c] for c in ("wall", "cpu")} for k, v in runs.items()}
        out["steering"].update(new_tokens=N, heads=len(heads), layers_touched=len({h[0] for h in heads}),
                               prompt_tokens=prep.prompt_len)
        spec["tick"]()
    return out


# Evaluation throughput: strips evaluated (every strip x 6 targets x each steered condition, plus the unsteered
# answer) and the protocols timed, per model. The mid-size model's generations take seconds each: one strip, VQA.
EVAL_STRIPS = {"organism": 8, "qwen2vl-mid": 1, "qwen2vl-tiny": 2}
EVAL_PROTOCOLS = {"organism": ("vqa", "narration"), "qwen2vl-mid": ("vqa",), "qwen2vl-tiny": ("vqa", "narration")}
EVAL_CONDITIONS = ("unsteered", "top", "random")
EVAL_FLOOR_ROWS = 8  # rows of the batched prefill that prices the floor


def _protocol_prompts() -> dict:
    from gazekit.regions import NARRATION_PROMPT, VQA_QUESTION
    return {"vqa": VQA_QUESTION, "narration": NARRATION_PROMPT}


def _evaluation(vlm, subject: str, spec: dict) -> dict:
    """Judged (strip, target) pairs per second of each protocol in `EVAL_PROTOCOLS[subject]`, with its defaults
    (batched) against `batch_size=1` (one generation at a time), alternating in this process; the answers of the
    two must be identical (greedy decoding, float32). Heads come from discovery on other strips."""
    import gazekit
    import gazekit.evaluate as ev

    base = _strips_for(subject, EVAL_STRIPS[subject] + 2)
    found, strips = base[:2], base[2:]  # discovery on two strips, evaluation on the others
    scores = gazekit.discover(vlm, found, progress=False)
    tokens = spec.get("eval_tokens") or {}
    out = {}
    for protocol in EVAL_PROTOCOLS[subject]:
        fn = getattr(ev, protocol)
        kw = dict(conditions=EVAL_CONDITIONS, progress=False)
        if protocol in tokens:
            kw["max_new_tokens"] = tokens[protocol]

        def one(batch_size=None, fn=fn, kw=kw):  # None: the protocol's own default
            extra = {} if batch_size is None else {"batch_size": batch_size}
            return fn(vlm, strips, scores, **kw, **extra).table

        runs = _alternate({"batched": one, "one_at_a_time": lambda: one(1)}, spec["repeats"],
                          spec["device"], spec.get("tick"))
        tables = runs["batched"]["results"] + runs["one_at_a_time"]["results"]
        first = tables[0]
        same = all(list(t["answer"]) == list(first["answer"]) and list(t["hit"]) == list(first["hit"])
                   for t in tables)
        pairs = len(first)
        block = {k: {c: runs[k][c] for c in ("wall", "cpu")} for k in runs}
        block.update(pairs=pairs, strips=len(strips), conditions=list(EVAL_CONDITIONS), same_answers=same,
                     generations=int(first["key"].nunique()), hit_rate=float(first["hit"].mean()),
                     judge=str(first["judge"].iloc[0]))
        # the floor: every generation's prefill (its prompt through the model once). Rows steered toward
        # different targets share no prefill (the bias acts on every prompt row), so whatever the batching, the
        # generations cost at least their prefills at the cheapest per-row price measured: one row alone, or a
        # batch of EVAL_FLOOR_ROWS rows per row (cheaper on a small model; no cheaper once a prefill fills the CPU).
        prompt = _protocol_prompts()[protocol]
        one = vlm.prepare(strips[0], prompt)
        many = vlm.prepare_batch([strips[0]] * EVAL_FLOOR_ROWS, [prompt] * EVAL_FLOOR_ROWS)
        prefill = _alternate({"one": lambda: vlm.model(**one) and None, "batch": lambda: vlm.model(**many) and None},
                             spec["repeats"], spec["device"])
        block["prefill"] = {c: prefill["one"][c] for c in ("wall", "cpu")}
        block["prefill_batch"] = {c: prefill["batch"][c] for c in ("wall", "cpu")}
        block["prefill_batch_rows"] = EVAL_FLOOR_ROWS
        out[protocol] = block
    return out


def _quant_bytes(folder, device) -> dict:
    """Bytes of the Linear layers bitsandbytes converts to NF4, against the same layers in fp16."""
    import torch

    import gazekit
    from gazekit.testing import load_processor

    vlm = gazekit.load(str(folder), load_processor("qwen2_vl", folder), quantize="4bit", dtype=torch.float16)
    import bitsandbytes as bnb

    conv4 = conv16 = 0
    n_conv = 0
    seen = set()
    for module in vlm.model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            qs = w.quant_state
            conv16 += int(math.prod(qs.shape)) * 2
            b = w.numel() * w.element_size()  # packed 4-bit codes
            for t in (qs.absmax, getattr(qs, "code", None)):
                if t is not None:
                    b += t.numel() * t.element_size()
            if getattr(qs, "state2", None) is not None:  # nested quantisation of absmax
                b += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
                b += qs.state2.code.numel() * qs.state2.code.element_size()
            conv4 += b
            n_conv += 1
            seen.add(id(w))
    whole4, whole16 = conv4, conv16
    for p in list(vlm.model.parameters()) + list(vlm.model.buffers()):
        if id(p) in seen:
            continue
        whole4 += p.numel() * p.element_size()
        whole16 += p.numel() * 2 if torch.is_floating_point(p) else p.numel() * p.element_size()
    return {"converted_layers": n_conv, "converted_fp16_bytes": conv16, "converted_4bit_bytes": conv4,
            "model_fp16_bytes": whole16, "model_4bit_bytes": whole4,
            "note": "4-bit bytes include the quantisation state (absmax, nested absmax, code books); vision tower "
                    "and lm_head stay in fp16 (gazekit's default skip list)"}


# ------------------------------------------------------------------------------------------ orchestration
def _device_info(device: str, threads: int) -> dict:
    import torch
    import transformers

    import gazekit

    info = {"device": device, "torch_threads": threads, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "gazekit": gazekit.__version__,
            "platform": platform.platform()}
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info["cpu"] = cpu
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _job_env(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               TOKENIZERS_PARALLELISM="false")
    # the job imports this same gazekit, also when it runs from a source checkout that is not installed
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if _is_memory_job(spec) and spec["device"] == "cpu":
        # glibc would otherwise serve mid-size tensors from its heap and keep freed pages resident, so RSS would
        # count allocator slack; a fixed mmap threshold returns every freed block of >= 64 KiB to the OS at once.
        # Set before the process starts (as the environment variable) so that its whole heap is laid out this way.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def _is_memory_job(spec: dict) -> bool:
    return spec["task"] not in ("timing", "quant", "evaluation")


class _ForkServer:
    """A process that has imported torch, transformers and gazekit — and computed nothing — and forks one child per
    memory job. Each job still runs in a fresh process that has done nothing before it loads the model and takes
    its own baseline, but does not pay the ~5 s of imports again (the whole bench: 5.6 min instead of 8.7). One
    server serves one round of a model's memory jobs, so the rounds still start from independent heap layouts, as
    fresh interpreters would. On a CPU under Linux only (fork); elsewhere, and for GPU jobs (CUDA does not survive
    a fork once anything has queried it, and imports may), each job is its own `python -m benchmarks.bench --_worker`
    process."""

    def __init__(self, env: dict, workdir: Path):
        fd, name = tempfile.mkstemp(prefix="fork-server-", suffix=".log", dir=workdir)
        self._log_path, self._log = Path(name), os.fdopen(fd, "w")
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench", "--_serve"], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        if self._proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"the benchmark's fork server did not start:\n{self._log_path.read_text()[-4000:]}")

    def run(self, spec_path: Path) -> tuple[int, str]:
        """Run one job (`_worker_main(spec_path)`) in a forked child: (its exit status, its output)."""
        self._proc.stdin.write(f"{spec_path}\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the benchmark's fork server died:\n{self._log_path.read_text()[-4000:]}")
        output = _child_output(spec_path)
        return int(reply), (output.read_text() if output.exists() else "")

    def close(self):
        with contextlib.suppress(Exception):
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def _memory_server(isolate: bool, spec: dict, workdir: Path):
    """A `_ForkServer` for CPU memory jobs like `spec` (None for GPU jobs, jobs run here, or where fork is
    unavailable), closed after."""
    if not (isolate and _can_fork() and spec["device"] == "cpu"):
        yield None
        return
    server = _ForkServer(_job_env(spec), workdir)
    try:
        yield server
    finally:
        server.close()


def _child_output(spec_path) -> Path:
    """Where a forked job writes its stdout and stderr."""
    return Path(f"{spec_path}.stderr")


def _can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _serve_main():
    """The fork server's loop: a spec path per line on stdin, the forked child's exit status per line on stdout."""
    import traceback

    import torch  # noqa: F401  (imported here once, for every child)
    import transformers

    import gazekit  # noqa: F401
    import gazekit.discover  # noqa: F401
    import gazekit.models.offline  # noqa: F401
    import gazekit.organism  # noqa: F401

    for name in ("LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration", "PreTrainedTokenizerFast",
                 "Qwen2VLImageProcessorPil", "Qwen2VLProcessor"):  # transformers imports its modules lazily
        with contextlib.suppress(Exception):
            getattr(transformers, name)
    print("ready", flush=True)
    for line in sys.stdin:
        spec_path = line.strip()
        pid = os.fork()
        if pid == 0:  # the child: its output goes to a file, never into the server's reply pipe
            code = 1
            try:
                fd = os.open(_child_output(spec_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                _worker_main(spec_path)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _run_job(spec: dict, isolate: bool, workdir: Path, server: Optional[_ForkServer] = None) -> dict:
    """One job: here (isolate=False), in a child of the fork server (memory jobs, when one is given), or in its own
    fresh `python -m benchmarks.bench --_worker` process."""
    if not isolate:
        return _worker(spec)
    tick = spec.pop("tick")
    path = workdir / f"{spec['subject']}-{spec['task']}.json"
    spec = dict(spec, out=str(path))
    spec_path = path.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    if server is not None and _is_memory_job(spec):
        code, stderr = server.run(spec_path)
    else:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--_worker", str(spec_path)],
                              env=_job_env(spec), capture_output=True, text=True)
        code, stderr = proc.returncode, proc.stderr
    if code != 0:
        raise RuntimeError(f"benchmark job {spec['subject']}/{spec['task']} failed (exit {code}):\n{stderr[-4000:]}")
    result = json.loads(path.read_text())
    for _ in range(result.pop("ticks", 0)):
        tick()
    return result


def _worker_main(spec_path: str):
    spec = json.loads(Path(spec_path).read_text())
    ticks = []
    spec["tick"] = lambda: ticks.append(1)
    result = _worker(spec)
    result["ticks"] = len(ticks)
    Path(spec["out"]).write_text(json.dumps(result))


def _median(xs) -> float:
    return float(np.median(xs))


def _median_memory(runs: list) -> dict:
    """One memory job's repeats (each its own fresh process): the first run's result (with tensor_bytes, counted in
    that run only: it does not vary) with memory_bytes the median of all, and every run's bytes kept (at the
    organism's scale Python's 256 KiB allocation arenas alone move a single figure by a quarter of a megabyte)."""
    out = dict(runs[0])
    values = [r["memory_bytes"] for r in runs]
    out["memory_bytes"] = int(np.median(values))
    out["memory_bytes_runs"] = values
    return out


def _pair(block: dict, a: str, b: str, clock: str) -> dict:
    """Medians of two methods' runs on `clock`, plus every run on both clocks."""
    out = {f"{a}_s": _median(block[a][clock]), f"{b}_s": _median(block[b][clock]), "clock": clock}
    for n in (a, b):
        out[f"{n}_runs"] = block[n]
    return out


def _summarise(subject: str, mem: dict, timing: dict, quant: Optional[dict], clock: str,
               evaluation: Optional[dict] = None) -> dict:
    """mem: the memory jobs' results by task (_ONE_STRIP_MEMORY_JOBS, and their "-all" twins for whole jobs)."""
    ref, gk, plain, encode = mem["reference"], mem["gazekit"], mem["plain"], mem["encode"]
    d = timing["discovery"]
    ref_mat, gk_mat = np.array(ref["matrix"]), np.array(gk["matrix"])
    floor = plain["memory_bytes"] / 2**20
    least = encode["memory_bytes"] / 2**20
    res = {
        "info": gk["info"],
        "discovery_time": dict(_pair(d, "reference", "gazekit", clock), strips=d["strips"],
                               strips_per_forward=d["strips_per_forward"]),
        "memory": {"reference_mb": ref["memory_bytes"] / 2**20, "gazekit_mb": gk["memory_bytes"] / 2**20,
                   "strips": 1, "plain_forward_mb": floor, "image_encoding_mb": least,
                   "runs_mb": {k: [b / 2**20 for b in mem[k].get("memory_bytes_runs", [mem[k]["memory_bytes"]])]
                               for k in _ONE_STRIP_MEMORY_JOBS},
                   "tensors_mb": ({k: mem[k]["tensor_bytes"] / 2**20 for k in _ONE_STRIP_MEMORY_JOBS}
                                  if "tensor_bytes" in gk else None),
                   "plain_forward_ratio": (ref["memory_bytes"] / plain["memory_bytes"]
                                           if plain["memory_bytes"] > 0 else float("inf")),
                   "best_possible_ratio": (ref["memory_bytes"] / encode["memory_bytes"]
                                           if encode["memory_bytes"] > 0 else float("inf")),
                   "how": gk["memory_how"] + " (each figure the median of repeated runs, each run one "
                                             "method once in its own fresh process after a warm-up on a small "
                                             "strip). plain_forward_mb: one plain sdpa forward of one "
                                             "prompt, nothing recorded; image_encoding_mb: preparing one prompt's "
                                             "inputs and running the vision tower on its image, nothing else — "
                                             "what every discovery method that uses the model's processor and "
                                             "vision tower as they are must at least do, so reference_mb / "
                                             "image_encoding_mb bounds the ratio such a method can reach. "
                                             "tensors_mb (CPU, information): the same calls once more, counting "
                                             "only the peak of torch tensor storages alive at once"},
        "score_diff": {"max_abs": max(float(np.abs(ref_mat - gk_mat).max()), d["same_process_diff"]),
                       "max_score": float(np.abs(ref_mat).max())},
    }
    if "capture" in timing:  # not measured on the real-dimension model (REAL_DIMS_ONLY)
        res["capture_overhead"] = _pair(timing["capture"], "plain", "capture", clock)
        res["capture_overhead"]["prompt_tokens"] = timing["capture"]["prompt_tokens"]
        r = res["capture_overhead"]
        r["ratio"] = r["capture_s"] / r["plain_s"] - 1.0
        res["steering"] = dict(_pair(timing["steering"], "unsteered", "steered", clock),
                               **{k: v for k, v in timing["steering"].items() if k not in ("unsteered", "steered")})
        r = res["steering"]
        r["ratio"] = r["steered_s"] / r["unsteered_s"]
    for protocol, block in (evaluation or {}).items():
        # pairs per second = pairs / seconds, so the throughput ratio is one-at-a-time time / batched time
        e = dict(_pair(block, "batched", "one_at_a_time", clock),
                 **{k: v for k, v in block.items() if k not in ("batched", "one_at_a_time")})
        e["batched_pairs_per_s"] = e["pairs"] / e["batched_s"]
        e["one_at_a_time_pairs_per_s"] = e["pairs"] / e["one_at_a_time_s"]
        e["ratio"] = e["one_at_a_time_s"] / e["batched_s"]
        e["prefill_s"] = _median(block["prefill"][clock])
        e["prefill_per_batched_row_s"] = _median(block["prefill_batch"][clock]) / block["prefill_batch_rows"]
        cheapest = min(e["prefill_s"], e["prefill_per_batched_row_s"])
        e["best_possible_ratio"] = e["one_at_a_time_s"] / (e["generations"] * cheapest)
        res[f"eval_{protocol}"] = e
    if "gazekit-all" in mem:  # the whole timed job, for information: batching strips costs memory
        res["memory_whole_job"] = {"strips": mem["gazekit-all"]["strips"],
                                   "reference_mb": mem["reference-all"]["memory_bytes"] / 2**20,
                                   "gazekit_mb": mem["gazekit-all"]["memory_bytes"] / 2**20,
                                   "strips_per_forward": d["strips_per_forward"]}
    r = res["discovery_time"]
    r["ratio"] = r["reference_s"] / r["gazekit_s"]
    r = res["memory"]
    r["ratio"] = r["reference_mb"] / r["gazekit_mb"] if r["gazekit_mb"] > 0 else float("inf")
    res["score_diff"]["ratio"] = res["score_diff"]["max_abs"]
    if quant is not None:
        res["quant_bytes"] = dict(quant, ratio=quant["converted_4bit_bytes"] / quant["converted_fp16_bytes"],
                                  model_ratio=quant["model_4bit_bytes"] / quant["model_fp16_bytes"])
    for key, block in res.items():
        if key in TARGETS:
            target = target_for(key, subject)
            if target is None:
                block["target"], block["met"] = None, None
                continue
            kind, value = target
            block["target"] = f"{'>=' if kind == 'min' else '<='} {value:g}"
            block["met"] = bool(block["ratio"] >= value if kind == "min" else block["ratio"] <= value)
            bound = block.get("best_possible_ratio")
            if not block["met"] and bound is not None and kind == "min" and bound < value and key.startswith("eval_"):
                cheapest = min(block["prefill_s"], block["prefill_per_batched_row_s"])
                block["unreachable"] = (f"every generation needs its own prefill, at best {cheapest:.3g} s a row "
                                        f"(alone {block['prefill_s']:.3g} s, in a batch of {EVAL_FLOOR_ROWS} "
                                        f"{block['prefill_per_batched_row_s']:.3g} s a row) x "
                                        f"{block['generations']}, so no batching of these rows can beat "
                                        f"{bound:.2f}x here")
            elif not block["met"] and bound is not None and kind == "min" and bound < value:
                block["unreachable"] = (f"preparing the inputs and encoding the image alone need "
                                        f"{block['image_encoding_mb']:.2f} MB, so no method that uses the model's "
                                        f"processor and vision tower as they are can beat {bound:.2f}x "
                                        f"here (one plain forward: {block['plain_forward_mb']:.2f} MB, "
                                        f"{block['plain_forward_ratio']:.2f}x)")
        if key.startswith("eval_") and not block["same_answers"]:  # faster but different answers: not a speed-up
            block["met"] = False
    return res


def run(models: Sequence[str] = DEFAULT_MODELS, *, quick: bool = False, repeats: Optional[int] = None,
        out: Optional[str] = "bench.json", threads: int = 1, device: Optional[str] = None, dtype: str = "float32",
        gen_tokens: Optional[int] = None, isolate: bool = True, progress: bool = True, verbose: bool = True,
        command: Optional[str] = None, organism_dir: Optional[str] = None, strips: Optional[int] = None,
        evaluation: bool = True) -> dict:
    """Run the benchmark; print the table (verbose) and write JSON to `out` (None: don't). Returns the results.

    models: any of SUBJECTS. quick: fewer repeats and generated tokens. threads: torch threads in every job.
    isolate: run each job in a fresh process (needed for CPU memory figures; False runs everything here).
    organism_dir: measure an organism saved in this folder instead of the shipped weights. strips: strips in the
    timed discovery job (default per model: `DEFAULT_STRIPS`); memory is measured on one strip, and on the whole
    job for information. evaluation: also time the evaluation protocols (`EVAL_PROTOCOLS`), batched against one
    generation at a time."""
    import torch
    from tqdm.auto import tqdm

    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    for m in models:
        if m not in SUBJECTS:
            raise ValueError(f"unknown benchmark model {m!r}; choose from {', '.join(SUBJECTS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    torch.set_num_threads(threads)
    R = repeats or (2 if quick else 3)
    # CPU with one thread: CPU time of the measuring process is the work done and does not count other programs'
    # load on a shared machine; GPU (or several threads): wall-clock time. Both clocks are kept in the JSON.
    clock = "cpu" if device == "cpu" and threads == 1 else "wall"
    # the cheap pairs (one forward, one generation) get more repeats: their ratios are close to 1 and need them
    plan = dict(repeats=R, capture_repeats=2 * R + 1, gen_repeats=R + 1,
                gen_tokens=gen_tokens or (16 if quick else 32))
    results = {"device": _device_info(device, threads), "dtype": dtype, "quick": quick, **plan,
               "clock": clock, "command": command, "models": {}}
    jobs = []
    for m in models:
        if m == "organism" and (why := _organism_missing(organism_dir)):
            results["models"][m] = {"skipped": why}
            if verbose:
                print(f"[benchmarks] {m}: {why}", file=sys.stderr)
            continue
        jobs.append(m)
    n_strips = {m: strips or DEFAULT_STRIPS[m] for m in jobs}
    if any(n < 1 for n in n_strips.values()):
        raise ValueError(f"strips must be >= 1, got {strips}")
    memory_jobs = {m: list(_ONE_STRIP_MEMORY_JOBS) + (["reference-all", "gazekit-all"] if n_strips[m] > 1 else [])
                   for m in jobs}
    evaluated = {m: bool(evaluation) and m in EVAL_PROTOCOLS for m in jobs}
    steps = sum((0 if m == "organism" else 1) + (0 if m in ("organism", *REAL_DIMS_ONLY) else 1)
                + R * len(memory_jobs[m]) + R + (0 if m in REAL_DIMS_ONLY else 2)
                + (R * len(EVAL_PROTOCOLS.get(m, ())) if evaluated[m] else 0) for m in jobs)
    bar = tqdm(total=steps, desc="benchmarks", unit="step", disable=not progress)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gazekit-bench-") as tmp:
        tmp = Path(tmp)
        try:
            for m in jobs:
                folder = organism_dir if m == "organism" else None
                if m != "organism":
                    bar.set_postfix_str(f"{m}: building random weights")
                    folder = build_qwen_folder(_QWEN_SIZES[m], tmp / m)
                    bar.update(1)
                base = dict(subject=m, folder=str(folder) if folder else None, device=device, dtype=dtype,
                            threads=threads, tick=lambda: bar.update(1), strips=n_strips[m], **plan)
                runs: dict = {task: [] for task in memory_jobs[m]}
                for r in range(R):  # each job R times, each in a fresh process, interleaved; medians
                    # a fork server per round: its children start from one heap layout, so that the R rounds
                    # stay independent samples of the allocators' state (as R fresh interpreters would be)
                    bar.set_postfix_str(f"{m}: memory, round {r + 1}/{R}")
                    with _memory_server(isolate, dict(base, task="memory"), tmp) as server:
                        for task in memory_jobs[m]:
                            bar.set_postfix_str(f"{m}: memory of {task} (fresh process {r + 1}/{R})")
                            tensors = r == 0 and task in _ONE_STRIP_MEMORY_JOBS  # deterministic: one count is enough
                            runs[task].append(_run_job(dict(base, task=task, tensors=tensors), isolate, tmp,
                                                       server))
                            bar.update(1)
                mem = {task: _median_memory(v) for task, v in runs.items()}
                bar.set_postfix_str(f"{m}: timings")
                timing = _run_job(dict(base, task="timing"), isolate, tmp)
                evals = None
                if evaluated[m]:
                    bar.set_postfix_str(f"{m}: evaluation throughput")
                    evals = _run_job(dict(base, task="evaluation"), isolate, tmp)["evaluation"]
                quant = None
                if m not in ("organism", *REAL_DIMS_ONLY):
                    bar.set_postfix_str(f"{m}: 4-bit load")
                    quant = _run_job(dict(base, task="quant"), isolate, tmp)
                    bar.update(1)
                results["models"][m] = _summarise(m, mem, timing, quant, clock, evals)
        finally:
            bar.close()
    results["wall_s"] = time.perf_counter() - t_start
    results["ratios"] = {m: {k: v["ratio"] for k, v in r.items() if isinstance(v, dict) and "ratio" in v}
                         for m, r in results["models"].items() if "skipped" not in r}
    results["all_targets_met"] = all(v.get("met") is not False for r in results["models"].values()
                                     if "skipped" not in r for v in r.values() if isinstance(v, dict))
    results["missed"] = [f"{m}: {k}" + (f" (unreachable: {v['unreachable']})" if v.get("unreachable") else "")
                         for m, r in results["models"].items() if "skipped" not in r
                         for k, v in r.items() if isinstance(v, dict) and v.get("met") is False]
    if verbose:
        print(format_table(results))
        if results["missed"]:
            print("targets missed: " + "; ".join(results["missed"]))
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=_json_default))
        if verbose:
            print(f"[benchmarks] wrote {out}", file=sys.stderr)
    return results


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


def _fmt(x, unit=""):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.1e}{unit}"
    return f"{x:#.3g}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"


def format_table(results: dict) -> str:
    """The results as a plain-text table: measure, reference, gazekit, ratio, target, met?"""
    rows = [("model", "measure", "reference", "gazekit", "ratio", "target", "met?")]
    for m, r in results["models"].items():
        if "skipped" in r:
            rows.append((m, "skipped", "", "", "", "", ""))
            continue
        met = lambda b: "—" if b.get("met") is None else ("yes" if b["met"] else "NO")  # noqa: E731
        tgt = lambda b: b.get("target") or "(info)"  # noqa: E731
        d = r["discovery_time"]
        rows.append((m, f"discovery time / strip ({d['strips']} strips)", _fmt(d["reference_s"], " s"),
                     _fmt(d["gazekit_s"], " s"), f"{d['ratio']:.2f}x", tgt(d), met(d)))
        d = r["memory"]
        rows.append((m, "extra peak memory (1 strip)", _fmt(d["reference_mb"], " MB"), _fmt(d["gazekit_mb"], " MB"),
                     f"{d['ratio']:.2f}x", tgt(d), met(d) + (" (unreachable)" if d.get("unreachable") else "")))
        rows.append((m, "  floor: inputs + image encoding", _fmt(d["reference_mb"], " MB"),
                     _fmt(d["image_encoding_mb"], " MB"), f"{d['best_possible_ratio']:.2f}x", "(best possible)", "—"))
        rows.append((m, "  floor: 1 plain forward", _fmt(d["reference_mb"], " MB"), _fmt(d["plain_forward_mb"], " MB"),
                     f"{d['plain_forward_ratio']:.2f}x", "(info)", "—"))
        if d.get("tensors_mb"):
            t = d["tensors_mb"]
            for label, k in (("tensors only (no allocator pages)", "gazekit"),
                             ("tensors only: 1 plain forward", "plain")):
                rows.append((m, "  " + label, _fmt(t["reference"], " MB"), _fmt(t[k], " MB"),
                             f"{t['reference'] / max(t[k], 1e-9):.2f}x", "(info)", "—"))
        if "memory_whole_job" in r:
            d = r["memory_whole_job"]
            rows.append((m, f"  memory, whole job ({d['strips']} strips)", _fmt(d["reference_mb"], " MB"),
                         _fmt(d["gazekit_mb"], " MB"), f"{d['reference_mb'] / max(d['gazekit_mb'], 1e-9):.2f}x",
                         "(info)", "—"))
        d = r["score_diff"]
        rows.append((m, "max |score diff|", "", "", _fmt(d["max_abs"]), tgt(d), met(d)))
        if "capture_overhead" in r:
            d = r["capture_overhead"]
            rows.append((m, "capture vs plain sdpa fwd", _fmt(d["plain_s"], " s"), _fmt(d["capture_s"], " s"),
                         f"{100 * d['ratio']:+.1f}%", tgt(d).replace("0.15", "15%"), met(d)))
            d = r["steering"]
            rows.append((m, f"steered gen ({d['new_tokens']} tok)", _fmt(d["unsteered_s"], " s"),
                         _fmt(d["steered_s"], " s"), f"{d['ratio']:.2f}x", tgt(d), met(d)))
        for protocol in ("vqa", "narration"):
            if f"eval_{protocol}" in r:
                d = r[f"eval_{protocol}"]
                rows.append((m, f"{protocol} pairs/s, batched vs 1 at a time ({d['pairs']} pairs)",
                             _fmt(d["one_at_a_time_pairs_per_s"], "/s"), _fmt(d["batched_pairs_per_s"], "/s"),
                             f"{d['ratio']:.2f}x", tgt(d), met(d) + ("" if d["same_answers"] else " (ANSWERS DIFFER)")
                             + (" (unreachable)" if d.get("unreachable") else "")))
                each = min(d["prefill_s"], d["prefill_per_batched_row_s"])
                rows.append((m, f"  floor: {d['generations']} prefills ({_fmt(each, ' s')} a row)", "", "",
                             f"{d['best_possible_ratio']:.2f}x", "(best possible)", "—"))
        if "quant_bytes" in r:
            d = r["quant_bytes"]
            rows.append((m, "4-bit / fp16 converted", _fmt(d["converted_fp16_bytes"] / 2**20, " MB"),
                         _fmt(d["converted_4bit_bytes"] / 2**20, " MB"), f"{d['ratio']:.3f}", tgt(d), met(d)))
            rows.append((m, "4-bit / fp16 whole model", _fmt(d["model_fp16_bytes"] / 2**20, " MB"),
                         _fmt(d["model_4bit_bytes"] / 2**20, " MB"), f"{d['model_ratio']:.3f}", "(info)", "—"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    dev = results["device"]
    where = dev.get("gpu") or dev.get("cpu") or dev["device"]
    head = (f"gazekit benchmark on {where} ({dev['device']}, {dev['torch_threads']} torch thread(s)), {results['dtype']}, "
            f"medians of {results['repeats']} repeat(s), {results['clock']} time" + (" [quick]" if results["quick"] else ""))
    return head + "\n" + "\n".join(lines)


def main(argv=None):
    """The command line (`python -m benchmarks --help`); argv: the arguments (default sys.argv[1:]). Returns 0, also
    when a target is missed (a measurement, not a test)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (2) and 16 generated tokens")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats per measure (default 3, quick 2)")
    p.add_argument("--out", default="bench.json", help="JSON file to write (default bench.json; '' for none)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(SUBJECTS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every job (default 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32; the score target assumes it)")
    p.add_argument("--gen-tokens", type=int, default=None, help="tokens per generation (default 32, quick 16)")
    p.add_argument("--strips", type=int, default=None,
                   help="strips in the timed discovery job (default: organism 16, qwen2vl-mid 1)")
    p.add_argument("--real-dims", action="store_true",
                   help="add qwen2vl-2b-dims: random weights at Qwen2-VL-2B's dimensions, discovery time and memory "
                        "only (slow: see the module doc)")
    p.add_argument("--no-evaluation", action="store_true", help="skip the evaluation-throughput measures")
    p.add_argument("--organism-dir", default=None, help="an organism folder to use instead of the shipped weights")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._serve:
        _serve_main()
        return 0
    if a._worker:
        _worker_main(a._worker)
        return 0
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if a.real_dims and "qwen2vl-2b-dims" not in models:
        models.append("qwen2vl-2b-dims")
    res = run(models, quick=a.quick, evaluation=not a.no_evaluation, repeats=a.repeats, out=a.out or None, threads=a.threads, device=a.device,
              dtype=a.dtype, gen_tokens=a.gen_tokens, progress=not a.no_progress, organism_dir=a.organism_dir,
              strips=a.strips,
              command="python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0  # a measurement, not a test: misses are in the table and in the JSON ("missed")


if __name__ == "__main__":
    sys.exit(main())
