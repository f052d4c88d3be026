"""`python -m gazekit.tutorials`: runs notebooks headless, writes their PNG figures, reports failures.

Two throwaway notebooks in a temporary folder (no model: this checks the runner, nbval checks the tutorials):
one draws a known figure (and a widget holding a PNG), one fails. Each starts a real Jupyter kernel (~5 s).
"""
from __future__ import annotations

import json

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from gazekit import tutorials  # noqa: E402

DRAW = """
import numpy as np
import matplotlib.pyplot as plt
%config InlineBackend.figure_formats = ["png"]
fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
ax.imshow(np.eye(4))
ax.set_axis_off()
"""
WIDGET = """
import base64, io, ipywidgets
from matplotlib.figure import Figure
f = Figure(figsize=(1, 1), dpi=40); f.add_subplot().plot([0, 1])
buf = io.BytesIO(); f.savefig(buf, format="png")
out = ipywidgets.Output()
out.outputs = ({"output_type": "display_data", "data": {"image/png": base64.b64encode(buf.getvalue()).decode()},
                "metadata": {}},)
out
"""


def _nb(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runner_writes_figures_and_reports_failures(tmp_path, capsys):
    src = tmp_path / "tutorials"
    src.mkdir()
    _nb(src / "01_draw.ipynb", "x = 1", DRAW, WIDGET)
    _nb(src / "02_broken.ipynb", "raise RuntimeError('on purpose')")
    _nb(src / "notes.ipynb", "raise SystemExit('not a tutorial: must not run')")
    before = (src / "01_draw.ipynb").read_text()
    out = tmp_path / "figs"
    rc = tutorials.main(["--dir", str(src), "--out", str(out), "--no-progress"])
    assert rc == 1  # one notebook failed
    summary = json.loads((out / "summary.json").read_text())
    status = {n["notebook"]: n for n in summary["notebooks"]}
    assert set(status) == {"01_draw.ipynb", "02_broken.ipynb"}
    assert status["01_draw.ipynb"]["status"] == "ok" and status["01_draw.ipynb"]["figures"] == 2
    assert status["02_broken.ipynb"]["status"] == "failed" \
        and status["02_broken.ipynb"]["error"] == "RuntimeError: on purpose"
    cell_png = (out / "01_draw" / "cell02_1.png").read_bytes()
    widget_png = (out / "01_draw" / "widget01.png").read_bytes()
    assert cell_png.startswith(b"\x89PNG") and widget_png.startswith(b"\x89PNG")
    # the figure really is the drawn 4x4 identity image: decode it and look at its pixels
    from PIL import Image
    import io
    im = Image.open(io.BytesIO(cell_png)).convert("RGB")
    assert 50 <= im.size[0] <= 100 and 50 <= im.size[1] <= 100  # 2 in at 50 dpi, cropped tight by inline
    assert len(set(im.getdata())) >= 2  # yellow diagonal on purple, not a blank canvas
    assert (src / "01_draw.ipynb").read_text() == before  # notebooks untouched without --inplace
    assert "FAILED: 02_broken.ipynb" in capsys.readouterr().out


def test_runner_inplace_and_errors(tmp_path):
    src = tmp_path / "t"
    src.mkdir()
    _nb(src / "01_a.ipynb", "print(6 * 7)")
    s = tutorials.run_all(src, tmp_path / "o", inplace=True, progress=False)
    assert s["notebooks"][0]["status"] == "ok"
    nb = nbformat.read(src / "01_a.ipynb", as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "42\n"
    assert "execution" not in nb.cells[0].metadata  # no timestamps: committed outputs stay diff-stable
    with pytest.raises(FileNotFoundError, match="--dir"):
        tutorials.find_notebooks(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="matching"):
        tutorials.find_notebooks(src, only=["09"])
