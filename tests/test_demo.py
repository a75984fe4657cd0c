"""The demo runner: no notebook's failure (error, timeout, dead kernel) loses the others or its own output."""

import html.parser
import json

import nbformat
import pytest

from lab.notebooks import NotebookRun, prepare_demo, run_demo, run_notebook, write_index


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def books(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return {
        "ok": _notebook(src / "01_ok.ipynb", "import os; os.makedirs('artifacts', exist_ok=True)",
                        "open('artifacts/plot.png', 'wb').write(b'png'); print('done', os.environ['LAB_X'])"),
        "error": _notebook(src / "02_error.ipynb", "print('first cell ran')", "1 / 0", "print('never')"),
        "slow": _notebook(src / "03_slow.ipynb", "print('before')", "import time; time.sleep(30)"),
        "dies": _notebook(src / "04_dies.ipynb", "import os; os._exit(1)"),
    }


def test_a_cell_timeout_is_caught_and_the_executed_notebook_saved(books, tmp_path):
    run = run_notebook(books["slow"], tmp_path / "out", timeout=2)
    assert run.error and "Timeout" in run.error
    executed = nbformat.read(run.executed, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"


def test_a_dead_kernel_is_caught(books, tmp_path):
    run = run_notebook(books["dies"], tmp_path / "out", timeout=60)
    assert run.error and run.status == "failed"
    assert (tmp_path / "out" / "04_dies" / "04_dies.ipynb").exists()


def test_demo_runs_every_notebook_after_a_failure_and_indexes_every_artifact(books, tmp_path):
    out = tmp_path / "demo"
    lines = []
    runs, index = run_demo(out, [books["error"], books["ok"]], env={"LAB_X": "42"}, prepare=False,
                           echo=lines.append)
    assert [r.status for r in runs] == ["failed", "ok"]
    assert "ZeroDivisionError" in runs[0].error
    ok = nbformat.read(runs[1].executed, as_version=4)
    assert ok.cells[1].outputs[0]["text"] == "done 42\n"
    failed = nbformat.read(runs[0].executed, as_version=4)
    assert failed.cells[0].outputs[0]["text"] == "first cell ran\n" and not failed.cells[2].outputs
    assert any("[2/2]" in line for line in lines) and any("index.html" in line for line in lines)

    data = json.loads(index["json"].read_text())
    assert [n["status"] for n in data["notebooks"]] == ["failed", "ok"]
    listed = {a["path"]: a["kind"] for n in data["notebooks"] for a in n["artifacts"]}
    assert listed == {"02_error/02_error.ipynb": "executed notebook", "01_ok/01_ok.ipynb": "executed notebook",
                      "01_ok/artifacts/plot.png": "plot"}
    md = index["markdown"].read_text()
    assert "1 of 2 notebooks ran without error" in md and "[01_ok/artifacts/plot.png](01_ok/artifacts/plot.png)" in md
    assert "failed: ZeroDivisionError" in md

    class Links(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.hrefs = []

        def handle_starttag(self, tag, attrs):
            if tag == "a":
                self.hrefs.append(dict(attrs)["href"])

    parser = Links()
    parser.feed(index["html"].read_text())
    assert set(listed) <= set(parser.hrefs)
    assert all((out / h).exists() for h in parser.hrefs)


def test_index_of_no_artifacts(tmp_path):
    (tmp_path / "01_x").mkdir()
    (tmp_path / "01_x" / "01_x.ipynb").write_text("{}")
    run = NotebookRun("notebooks/01_x.ipynb", str(tmp_path / "01_x" / "01_x.ipynb"), 12.3)
    paths = write_index(tmp_path, [run], total_s=20.0)
    assert "1 of 1 notebooks ran without error in 20 s" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["notebooks"][0]["seconds"] == 12.3


def test_prepare_demo_loads_quantos_extension():
    lines = []
    done = prepare_demo(echo=lines.append)
    assert lines[0].startswith("preparing: optimum-quanto")
    assert isinstance(done["quanto_extension_s"], float), done


def test_notebook_benchmark_formats_a_finished_demo(tmp_path):
    from benchmarks import notebooks as bench

    (tmp_path / "01_x").mkdir()
    (tmp_path / "01_x" / "01_x.ipynb").write_text("{}")
    runs = [NotebookRun("notebooks/01_x.ipynb", str(tmp_path / "01_x" / "01_x.ipynb"), 61.2),
            NotebookRun("notebooks/02_y.ipynb", str(tmp_path / "01_x" / "01_x.ipynb"), 30.0, error="boom")]
    index = write_index(tmp_path, runs, total_s=95.0, prepare={"quanto_extension_s": 3.5})
    out = tmp_path / "bench"
    code = bench.main(["--from-index", str(index["json"]), "--wall-s", "512", "--label", "make demo", "--out", str(out)])
    assert code == 1  # one notebook failed: the benchmark says so
    record = json.loads((out / "notebooks.json").read_text())
    assert record["total_s"] == 512 and record["prepare_s"] == 3.5 and record["demo_total_s"] == 95.0
    assert [(n["notebook"], n["status"]) for n in record["notebooks"]] == [("01_x", "ok"), ("02_y", "failed")]
    md = (out / "notebooks.md").read_text()
    assert "| 01_x | ok | 61 |" in md and "**total (make demo)** | | **512**" in md and "CPUs" in md
