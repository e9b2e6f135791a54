"""The notebooks run top to bottom (on tiny models they build themselves)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "hypernet.ipynb", "finetune.ipynb"])
def test_notebook_runs(name, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install '.[notebooks]'")
    nbclient = pytest.importorskip("nbclient", reason="pip install '.[notebooks]'")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
