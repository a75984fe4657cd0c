"""Notebooks are tests too: each runs headless, top to bottom. How long they take is measured and
reported by ``python -m benchmarks.notebooks`` (docs/benchmarks.md), never asserted: a loaded machine
is slower, not wrong."""

import json

import pytest

from lab.notebooks import notebook_paths, run_notebook

# a hang guard per cell, not a budget: far above any cell's time on a busy 2-core machine
HANG_GUARD_S = 1800
# CI's parameters: fewer steps and repeats than a reader's default, and no torch.compile (a cold
# inductor cache costs minutes on a CI machine; the compile recipes have their own tests)
CI_PARAMETERS = {"LAB_MODEL": "tiny", "LAB_DEVICE": "cpu", "LAB_STEPS": "8", "LAB_REPEATS": "1", "LAB_COMPILE": "0"}
NOTEBOOKS = notebook_paths()


def test_notebook_artifacts_are_ignored_by_git():
    import subprocess

    from lab.env import REPO_ROOT

    for path in ("notebooks/artifacts/x.png", "runs/demo/index.md"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT, check=False)
        assert ignored.returncode == 0, f"{path} would show as untracked"


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
    run = run_notebook(path, tmp_path, timeout=HANG_GUARD_S, env=CI_PARAMETERS)
    assert run.error is None, run.error
    executed = json.loads((tmp_path / path.stem / path.name).read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code), "every code cell ran"
    final = code[-1]["outputs"]
    assert final and "text/markdown" in final[0]["data"], "the takeaway is written from the run's results"
    assert "{" not in final[0]["data"]["text/markdown"], "no unformatted placeholder in the takeaway"


# The method on a transformer: diagnose and verify run top to bottom on FLUX.1's architecture (tiny-flux), 4 steps
# (each tiny-flux step attends over FluxPipeline's 512 T5 tokens, so it costs more than a tiny UNet step)
TRANSFORMER = {**CI_PARAMETERS, "LAB_MODEL": "tiny-flux", "LAB_STEPS": "4"}


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in ("01_diagnose", "04_verify")], ids=lambda p: p.stem)
def test_notebook_executes_on_a_transformer(path, tmp_path):
    run = run_notebook(path, tmp_path, timeout=HANG_GUARD_S, env=TRANSFORMER)
    assert run.error is None, run.error
    executed = json.loads((tmp_path / path.stem / path.name).read_text())
    text = json.dumps(executed["cells"])
    assert "FluxPipeline" in text or "transformer" in text, "the notebook ran on the transformer model"
    final = [c for c in executed["cells"] if c["cell_type"] == "code"][-1]["outputs"]
    assert final and "text/markdown" in final[0]["data"]
