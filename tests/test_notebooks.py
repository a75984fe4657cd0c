"""Notebooks are tests too: each runs headless, top to bottom, within its time budget."""

import json

import pytest

from lab.notebooks import notebook_paths, run_notebook

# seconds each notebook may take on the tiny model on 2 CPU cores (the issues' budgets)
BUDGETS = {"01_diagnose": 90, "02_compare": 180, "03_optimize": 180, "04_verify": 180, "05_advance": 180}
# CI's parameters: fewer steps and repeats than a reader's default, and no torch.compile (a cold
# inductor cache costs minutes on a CI machine; the compile recipes have their own tests)
CI_PARAMETERS = {"LAB_MODEL": "tiny", "LAB_DEVICE": "cpu", "LAB_STEPS": "8", "LAB_REPEATS": "1", "LAB_COMPILE": "0"}
NOTEBOOKS = notebook_paths()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "?" in "".join(cells[0]["source"]), "opens with its question"
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), "tagged parameters cell"
    assert "takeaway" in "".join(cells[-1]["source"]).lower(), "ends with a takeaway"
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), "committed without outputs"
    ids = [c.get("id") for c in cells]
    assert all(ids) and len(set(ids)) == len(ids), "every cell has a unique id (nbformat 4.5 makes it required)"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_headless(path, tmp_path):
    run = run_notebook(path, tmp_path, timeout=600, env=CI_PARAMETERS)
    assert run.error is None, run.error
    assert run.seconds < BUDGETS.get(path.stem, 180), f"{path.stem} took {run.seconds:.0f} s"
    assert (tmp_path / path.stem / path.name).exists()
