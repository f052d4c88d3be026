"""The main job: execute every tutorial notebook headless and collect its figures.

    python -m gazekit.tutorials [--out figures/] [--dir tutorials/] [--only 02 04] [--inplace]
    python -m gazekit.tutorials --source URL --out DIR      # a class's copies, installing gazekit from URL on Colab
    python -m gazekit.tutorials --student --out DIR         # the same with every exercise solution replaced by a stub

Runs `tutorials/NN_*.ipynb` in order with nbclient (a fresh Python kernel per notebook, on the model each notebook's
`MODEL_ID` cell names: the embedded organism by default), shows a progress bar over all code cells, and writes every
PNG figure the notebooks produce into the output folder: `OUT/<notebook>/cellNN_M.png` for cell outputs and
`OUT/<notebook>/widgetNN.png` for figures inside widgets, plus `OUT/summary.json` (per notebook: seconds, figures,
status). The notebooks on disk are left untouched unless `--inplace` is given, which writes them back with their new
outputs (how the committed outputs are produced; `pytest --nbval` then checks them).

With `--source`, nothing runs: the notebooks are copied into `--out` with their setup cell's `GAZEKIT_SOURCE`
line set to URL; `--student` copies (nothing runs either) replace each exercise's solution cell (tagged
`solution`) with a stub that raises NotImplementedError with the exercise's hint, and drop all outputs (anything pip accepts: a git URL, a wheel URL or path; default: the PyPI distribution
`gazekit-vlm`). This is the one place a teacher sets where every notebook of a class installs gazekit from.

Exit status 1 if any notebook fails (the others still run; the failing cell's error is printed).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["DEFAULT_SOURCE", "find_notebooks", "set_install_source", "student_version",
           "write_copies", "run_notebook", "run_all",
           "main"]

# what the tutorials' setup cell installs on Colab: the PyPI distribution (the import name stays `gazekit`; the
# PyPI name `gazekit` is an unrelated eye-tracking package)
DEFAULT_SOURCE = "gazekit-vlm"
_SOURCE_LINE = re.compile(r'^GAZEKIT_SOURCE = "[^"\n]*"', re.M)

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in kernel tracebacks


def default_dir() -> Path:
    """`./tutorials` if it exists, else the `tutorials/` folder next to the installed package (a source checkout)."""
    here = Path.cwd() / "tutorials"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "tutorials"


def find_notebooks(directory, only: Optional[Sequence[str]] = None) -> list[Path]:
    """Tutorial notebooks (`NN_*.ipynb`) in order; `only` keeps those whose name starts with one of the prefixes."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no tutorials folder at {d}: run from a gazekit checkout (git clone ...) or pass "
                                "--dir PATH/TO/tutorials")
    nbs = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("."))
    if only:
        nbs = [p for p in nbs if any(p.name.startswith(o) for o in only)]
    if not nbs:
        raise FileNotFoundError(f"no tutorial notebooks (NN_*.ipynb) in {d}" + (f" matching {list(only)}" if only else ""))
    return nbs


def set_install_source(nb, source: str):
    """Point the notebook's setup cell (its first code cell) at `source`; returns the notebook (changed in place)."""
    if '"' in source or "\n" in source:
        raise ValueError(f"install source {source!r} must not contain quotes or newlines: give a pip requirement, "
                         "a URL or a path")
    setup = next((c for c in nb.cells if c.cell_type == "code"), None)
    if setup is None or not _SOURCE_LINE.search(setup.source):
        raise ValueError("this notebook has no gazekit setup cell (a first code cell with a GAZEKIT_SOURCE = \"...\" "
                         "line): is it a gazekit tutorial?")
    setup.source = _SOURCE_LINE.sub(f'GAZEKIT_SOURCE = "{source}"', setup.source, count=1)
    return nb


def student_version(nb):
    """Replace each exercise solution (a code cell tagged `solution` with `gazekit_exercise` metadata) by a stub: the
    solution's `def` line and docstring, then `raise NotImplementedError(hint)`; clear every output. In place."""
    for cell in nb.cells:
        ex = cell.metadata.get("gazekit_exercise")
        if cell.cell_type != "code" or "solution" not in cell.metadata.get("tags", []) or not ex:
            continue
        lines = cell.source.splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.startswith("def ")), None)
        if start is None:
            raise ValueError(f"exercise {ex.get('id')}: its solution cell has no `def` line to keep")
        keep = [lines[start]]
        if start + 1 < len(lines) and lines[start + 1].strip().startswith('"""'):
            keep.append(lines[start + 1])
        hint = f"exercise {ex['id']}: write this function. Hint: {ex['hint']}"
        cell.source = "\n".join([f"# Exercise {ex['id']}: your code here", *keep,
                                  f"    raise NotImplementedError({hint!r})"])
        cell.metadata.pop("jupyter", None)  # the stub is the student's to see
        cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"] + ["exercise"]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    return nb


def write_copies(directory=None, out="class_notebooks", *, source: str = DEFAULT_SOURCE, only=None,
                 student: bool = False) -> list[Path]:
    """Copy the tutorials into `out` (without running them), each installing gazekit from `source` on Colab;
    `student=True` writes the student versions (`student_version`)."""
    import nbformat

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in find_notebooks(directory or default_dir(), only):
        nb = set_install_source(nbformat.read(p, as_version=4), source)
        if student:
            student_version(nb)
        nbformat.write(nb, out / p.name)
        written.append(out / p.name)
    return written


def _pngs(nb) -> list[tuple[str, bytes]]:
    """(file name, PNG bytes) of every image in cell outputs and in widget Output models, in notebook order."""
    out = []
    code_idx = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_idx += 1
        m = 0
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "image/png" in data:
                m += 1
                out.append((f"cell{code_idx:02d}_{m}.png", base64.b64decode(data["image/png"])))
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    n = 0
    for model in state.values():
        if model.get("model_name") != "OutputModel":
            continue
        for o in model.get("state", {}).get("outputs", []):
            data = o.get("data", {})
            if "image/png" in data:
                n += 1
                out.append((f"widget{n:02d}.png", base64.b64decode(data["image/png"])))
    return out


def run_notebook(path, *, timeout: int = 600, kernel_name: str = "python3", on_cell=None):
    """Execute one notebook in its own folder; returns (executed notebook, seconds, error or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, record_timing=False,
                            store_widget_state=True, resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=on_cell)
    t0 = time.perf_counter()
    err = None
    try:
        client.execute()
    except CellExecutionError as e:
        err = e
    return nb, time.perf_counter() - t0, err


def run_all(directory=None, out="figures", *, only=None, inplace: bool = False, timeout: int = 600,
            kernel_name: str = "python3", progress: bool = True) -> dict:
    """Run the tutorials, write their figures under `out`; returns the summary written to `out/summary.json`."""
    import nbformat
    from tqdm.auto import tqdm

    # the kernels inherit this process's environment; with MPLBACKEND=Agg inline figures would vanish
    if os.environ.get("MPLBACKEND", "").lower() == "agg":
        os.environ.pop("MPLBACKEND")
    nbs = find_notebooks(directory or default_dir(), only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_cells = sum(sum(c.cell_type == "code" for c in nbformat.read(p, as_version=4).cells) for p in nbs)
    bar = tqdm(total=n_cells, desc="tutorials", unit="cell", disable=not progress, dynamic_ncols=True)
    summary = {"notebooks": [], "out": str(out)}
    t_all = time.perf_counter()
    try:
        for p in nbs:
            bar.set_description(p.stem)

            async def tick(**_kw):
                bar.update(1)

            nb, secs, err = run_notebook(p, timeout=timeout, kernel_name=kernel_name, on_cell=tick)
            figs = _pngs(nb)
            d = out / p.stem
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("*.png"):  # figures of an earlier run that this one may not produce again
                old.unlink()
            for name, data in figs:
                (d / name).write_bytes(data)
            entry = {"notebook": p.name, "seconds": round(secs, 1), "figures": len(figs),
                     "status": "ok" if err is None else "failed"}
            if err is not None:
                entry["error"] = _ANSI.sub("", str(err)).strip().splitlines()[-1][:500]
                tqdm.write(f"{p.name} FAILED:\n{err}", file=sys.stderr)
            elif inplace:
                nbformat.write(nb, p)
            summary["notebooks"].append(entry)
            tqdm.write(f"{p.name}: {secs:.1f} s, {len(figs)} figures" + ("" if err is None else " (FAILED)"))
    finally:
        bar.close()
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    """Command-line entry (`python -m gazekit.tutorials`): see the module doc for the options. Returns the exit
    status (1 if any notebook failed)."""
    ap = argparse.ArgumentParser(prog="python -m gazekit.tutorials", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures", help="folder for the figures (default: figures/)")
    ap.add_argument("--dir", default=None, help="tutorials folder (default: ./tutorials or the checkout's)")
    ap.add_argument("--only", nargs="*", default=None, help="run only notebooks whose names start with these")
    ap.add_argument("--inplace", action="store_true", help="write the executed notebooks back (commit outputs)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--source", default=None,
                    help="write copies into --out, installing gazekit from SOURCE on Colab, instead of running")
    ap.add_argument("--student", action="store_true",
                    help="write student copies into --out (solutions replaced by stubs), instead of running")
    a = ap.parse_args(argv)
    if a.source is not None or a.student:
        source = a.source or DEFAULT_SOURCE
        written = write_copies(a.dir, a.out, source=source, only=a.only, student=a.student)
        print(f"{len(written)} {'student ' if a.student else ''}notebooks in {a.out}/ install gazekit from "
              f"{source!r} on Colab")
        return 0
    s = run_all(a.dir, a.out, only=a.only, inplace=a.inplace, timeout=a.timeout, kernel_name=a.kernel,
                progress=not a.no_progress)
    failed = [n["notebook"] for n in s["notebooks"] if n["status"] != "ok"]
    nfig = sum(n["figures"] for n in s["notebooks"])
    print(f"{len(s['notebooks'])} notebooks in {s['seconds']} s, {nfig} figures in {s['out']}/"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
