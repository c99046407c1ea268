"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), on a tiny budget, and shows
a notebook progress bar, the live loss curve, samples, coloured probabilities and the exported page."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def outputs(cell) -> list[dict]:
    return cell.get("outputs", [])


def test_quickstart_notebook_runs_and_shows_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGEN_NOTEBOOK_TINY", "1")  # the kernel inherits it: a few steps per run
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    train = next(c for c in code if "textgen.train(out=" in c.source)
    kinds = {k for o in outputs(train) for k in o.get("data", {})}
    pytest.importorskip("ipywidgets")  # without it tqdm falls back to text, which is fine but not what is tested
    assert "application/vnd.jupyter.widget-view+json" in kinds  # tqdm's notebook bar
    pngs = [o["data"]["image/png"] for o in outputs(train) if "image/png" in o.get("data", {})]
    assert pngs and base64.b64decode(pngs[-1])[:8] == b"\x89PNG\r\n\x1a\n"  # the live loss curve
    text = "".join(o.get("text", "") for c in code for o in outputs(c))
    assert "stopped (max_steps) after 20 steps" in text
    for t in (0, 0.5, 1.0, 1.5):
        assert f"--- temperature {t} ---\nROMEO:" in text
    coloured = next(c for c in code if "show_probs" in c.source)
    html = "".join(o["data"].get("text/html", "") for o in outputs(coloured) if "data" in o)
    assert html.count('<span class="tok"') == 40 and "hsl(" in html
    assert "recipes.txt" in text
    assert (tmp_path / "shakespeare.html").stat().st_size > 10_000
