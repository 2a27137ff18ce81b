"""The notebook executes top to bottom on the micro ensemble's feature table."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "training_map.ipynb"


def test_training_map_notebook_executes(micro_table, tmp_path, monkeypatch):
    _, table_path = micro_table
    monkeypatch.setenv("TRAINMAP_FEATURES", str(table_path))
    monkeypatch.setenv("TRAINMAP_HORIZON", "6")
    monkeypatch.setenv("TRAINMAP_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "training_map.png").is_file()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("auroc" in output.get("text", "") for output in outputs)


def test_notebook_runs_on_reference_table(tmp_path, monkeypatch):
    """With the default table and horizon, the notebook finds the reference outliers at step 75."""
    monkeypatch.delenv("TRAINMAP_FEATURES", raising=False)
    monkeypatch.delenv("TRAINMAP_HORIZON", raising=False)
    monkeypatch.setenv("TRAINMAP_FOLDS", "8")
    monkeypatch.setenv("TRAINMAP_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    assert (tmp_path / "training_map.png").is_file()
    texts = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert "1200 checkpoints of 48 runs" in texts[0]
    metrics = next(text for text in texts if "auroc" in text)
    auroc = float(metrics.split("'auroc': ")[1].split(",")[0].rstrip("}\n"))
    assert auroc > 0.9, metrics
