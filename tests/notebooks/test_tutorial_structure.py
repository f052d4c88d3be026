"""The tutorials' shared structure, checked on the committed files (no kernel; nbval checks the outputs).

Every notebook: the identical setup cell first (Colab install from one variable, seeds, threads), a `MODEL_ID = None`
cell, learning objectives, a summary with a pointer to the next notebook, and committed outputs from a complete run
(every code cell executed, in order) that leak no local paths or memory addresses.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_eight_tutorials_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


def test_setup_cell_is_identical_and_safe():
    firsts = {p.name: _code(nbformat.read(p, as_version=4))[0].source for p in NOTEBOOKS}
    assert len(set(firsts.values())) == 1, "the first code cell differs between notebooks"
    setup = next(iter(firsts.values()))
    # one variable says where Colab installs from: the PyPI distribution, not the unrelated `gazekit` on PyPI
    from gazekit.tutorials import DEFAULT_SOURCE

    assert re.search(rf'^GAZEKIT_SOURCE = "{DEFAULT_SOURCE}"', setup, re.M)
    assert DEFAULT_SOURCE != "gazekit"
    # the embedded model follows DEVICE: every notebook moves it to the GPU when there is one
    # the install runs only on Colab: every code line mentioning pip sits in the `if IN_COLAB:` block
    lines = [ln for ln in setup.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    start = lines.index("if IN_COLAB:")
    block = [ln for ln in lines[start + 1:]]
    block = block[:next((i for i, ln in enumerate(block) if not ln.startswith("    ")), len(block))]
    pip_lines = [ln for ln in lines if "pip" in ln]
    assert pip_lines and all(ln in block for ln in pip_lines), pip_lines
    assert "torch.set_num_threads(1)" in setup and "torch.manual_seed(0)" in setup


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert "Learning objectives" in md[0]
    assert "## Summary" in md[-1] and ("**Next:**" in md[-1] or "last tutorial" in md[-1])
    assert any(re.search(r"^MODEL_ID = None", c.source, re.M) for c in _code(nb))
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_come_from_one_complete_run(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in _code(nb)]
    assert None not in counts, f"{path.name}: unexecuted cells; run python -m gazekit.tutorials --inplace"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells were not run top to bottom in one go"
    text = []
    for c in _code(nb):
        for o in c.outputs:
            assert o.output_type != "error", f"{path.name}: a committed cell raised"
            text.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
            if o.get("name") == "stderr":
                pytest.fail(f"{path.name}: stderr in committed outputs: {o['text'][:200]!r}")
    joined = "\n".join(text)
    for leak in ("/work/", "/tmp/", "/home/", "site-packages", " at 0x"):
        assert leak not in joined, f"{path.name}: output leaks {leak!r}"


def test_setup_cell_moves_the_embedded_model_to_device():
    for p in NOTEBOOKS:
        src = "\n".join(c.source for c in _code(nbformat.read(p, as_version=4)))
        assert re.search(r"^if MODEL_ID is None:.*\n    \w+\.model\.to\(DEVICE\)", src, re.M), p.name


def test_write_copies_sets_one_install_source_in_every_notebook(tmp_path):
    from gazekit.tutorials import set_install_source, write_copies

    url = "https://example.org/wheels/gazekit_vlm-0.1.0-py3-none-any.whl"
    written = write_copies(TUTORIALS, tmp_path, source=url)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for p in written:
        setup = _code(nbformat.read(p, as_version=4))[0].source
        assert f'GAZEKIT_SOURCE = "{url}"' in setup and "gazekit-vlm\"" not in setup.split("#")[0]
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    with pytest.raises(ValueError, match="quotes"):
        set_install_source(nb, 'x"; import os')
    nb.cells = [c for c in nb.cells if c.cell_type == "markdown"]
    with pytest.raises(ValueError, match="setup cell"):
        set_install_source(nb, url)


def _run_cells(sources):
    """Execute exercise cells (pure Python + numpy) in one namespace, as a kernel would; returns printed text."""
    import contextlib
    import io

    import numpy as np

    ns, buf = {"np": np}, io.StringIO()
    with contextlib.redirect_stdout(buf):
        for src in sources:
            exec(compile(src, "<cell>", "exec"), ns)
    return buf.getvalue()


def _exercises(nb):
    """(solution cell, the check cell after it) for every exercise."""
    cells = nb.cells
    return [(c, cells[i + 1]) for i, c in enumerate(cells) if c.metadata.get("gazekit_exercise")]


def test_every_exercise_is_folded_and_its_check_passes_on_the_solution():
    from gazekit.course import EXERCISES

    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        ex = _exercises(nb)
        assert len(ex) == len(EXERCISES.get(p.name[:2], [])), p.name
        for sol, check in ex:
            assert sol.metadata["jupyter"]["source_hidden"] and "solution" in sol.metadata["tags"]
            assert "gazekit.course import check_" in check.source
            assert _run_cells([sol.source, check.source]).startswith("pass:"), (p.name, sol.metadata)
            md = nb.cells[nb.cells.index(sol) - 1].source
            assert "Difficulty" in md and "min" in md and "Hint" in md


def test_student_copies_have_stubs_that_fail_their_checks(tmp_path):
    from gazekit.tutorials import main

    assert main(["--student", "--out", str(tmp_path), "--dir", str(TUTORIALS)]) == 0
    n = 0
    for p in NOTEBOOKS:
        teacher = nbformat.read(p, as_version=4)
        nb = nbformat.read(tmp_path / p.name, as_version=4)
        assert len(nb.cells) == len(teacher.cells)
        assert all(not c.outputs and c.execution_count is None for c in _code(nb))
        for stub, check in _exercises(nb):
            n += 1
            assert "NotImplementedError" in stub.source and "Hint:" in stub.source
            assert "solution" not in stub.metadata["tags"] and "jupyter" not in stub.metadata
            out = _run_cells([stub.source, check.source])
            assert out.startswith("not yet:"), out
    assert n == sum(len(v) for v in __import__("gazekit.course").course.EXERCISES.values())
