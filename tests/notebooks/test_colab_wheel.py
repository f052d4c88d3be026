"""The Colab path, end to end without Colab: build the wheel (`make wheel`'s command), make a fresh venv holding only
what Colab already has, and execute tutorial 01 there from its first cell, with `google.colab` present so that the
setup cell takes its Colab branch and pip-installs gazekit from the wheel (GAZEKIT_SOURCE in the environment).

What it cannot check: Colab itself (its exact package versions, its widget manager, its GPU). Slow (a few minutes:
most of it is pip), so marked `slow`; it needs the package index this machine's pip reaches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "tutorials" / "01_attention_extraction.ipynb"
CONSTRAINTS = ROOT / "ci" / "constraints.txt"
# what a Colab runtime already has (torch first, as the CPU wheel pinned by ci/constraints.txt); gazekit's other
# dependencies (bitsandbytes, ...) must come in through the wheel's own requirements
COLAB_HAS = ["transformers", "accelerate", "safetensors", "numpy", "pillow", "scipy", "pandas", "tqdm", "matplotlib",
             "seaborn", "ipywidgets", "ipykernel", "nbclient", "nbformat"]
KERNEL = "gazekit-colab-test"

# runs first in the kernel: Colab imports google.colab at start-up; a stand-in with the one call the setup cell makes
FAKE_COLAB = '''\
import importlib.machinery, importlib.util, sys, types
assert importlib.util.find_spec("gazekit") is None, "gazekit is importable before the setup cell installed it"
try:
    import google
except ImportError:
    google = types.ModuleType("google"); google.__path__ = []; sys.modules["google"] = google
colab = types.ModuleType("google.colab"); output = types.ModuleType("google.colab.output")
colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # libraries probe it with find_spec
output.__spec__ = importlib.machinery.ModuleSpec("google.colab.output", None)
output.enable_custom_widget_manager = lambda: None
colab.output = output; google.colab = colab
sys.modules.update({"google.colab": colab, "google.colab.output": output})'''
WHERE = 'import gazekit, importlib.metadata as md; print(gazekit.__file__); print(md.version("gazekit-vlm"))'

DRIVER = '''\
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name=sys.argv[3]).execute()
nbformat.write(nb, sys.argv[2])'''


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd[:4]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_and_runs_tutorial_01_from_its_first_cell(tmp_path):
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MPLBACKEND")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_CONSTRAINT"] = str(CONSTRAINTS)  # keeps every pip call, the notebook's too, on the CPU torch
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], env=env)
    (wheel,) = dist.glob("gazekit_vlm-*.whl")

    venv = tmp_path / "colab"
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], env=env)
    _run([py, "-m", "pip", "install", "-q", *COLAB_HAS], env=env)
    _run([py, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL], env=env)
    t_setup = time.perf_counter() - t0

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(FAKE_COLAB))
    nb.cells.append(nbformat.v4.new_code_cell(WHERE))
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    env["GAZEKIT_SOURCE"] = str(wheel)
    t1 = time.perf_counter()
    # cwd = tmp_path: no ./gazekit source folder the kernel could import instead of the installed wheel
    _run([py, "-c", DRIVER, str(src), str(out), KERNEL], env=env, cwd=tmp_path)
    t_run = time.perf_counter() - t1

    ran = nbformat.read(out, as_version=4)
    code = [c for c in ran.cells if c.cell_type == "code"]
    text = ["".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.outputs)
            for c in code]
    assert "gazekit 0.1.0 on cpu" in text[1], text[1]  # the setup cell, after installing from the wheel
    where, version = text[-1].split()
    assert where.startswith(str(venv)) and "site-packages" in where, where
    assert version == "0.1.0"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    print(json.dumps({"setup_venv_s": round(t_setup, 1), "notebook_s": round(t_run, 1),
                      "total_s": round(time.perf_counter() - t0, 1)}))
