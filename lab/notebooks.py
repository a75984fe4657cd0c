"""Execute the numbered notebooks headless (nbclient), each in its own artifact folder.

The demo never loses work to one notebook: every exception nbclient raises (a cell error, a cell
timeout, a dead kernel) is caught, the executed notebook is saved with whatever ran, and the next
notebook runs. ``prepare_demo()`` does the heavy one-time setup (optimum-quanto's C++ extension)
before any notebook, with a progress line, so no timed cell hides a compiler run; ``write_index()``
lists every artifact with each notebook's status and seconds.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ._checks import writable_dir
from .env import REPO_ROOT
from .results import atomic_write_text

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# what the index lists, by kind; anything else under a notebook's folder is listed as "other"
KINDS = {".ipynb": "executed notebook", ".png": "plot", ".md": "report", ".html": "report",
         ".gz": "trace", ".json": "data", ".jsonl": "data", ".safetensors": "weights"}


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), optionally only those whose stem starts with a name."""
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in names)]
    return paths


@dataclass
class NotebookRun:
    """One executed notebook: where its executed copy is, how long it ran, and its error if any."""

    notebook: str
    executed: str
    seconds: float
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "ok"


def _one_line(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # drop the traceback's colour codes
    last = text.splitlines()[-1] if text else ""
    if type(err).__name__ == "CellExecutionError":  # its last line already names the cell's exception
        return last or repr(err)
    return f"{type(err).__name__}: {last}" if last else repr(err)


def run_notebook(path: Path, out: str | os.PathLike, *, timeout: int | None = None,
                 env: dict[str, str] | None = None) -> NotebookRun:
    """Execute ``path`` with its working directory in ``out/<stem>``; save the executed copy there, always.

    Args:
        timeout: seconds per cell; None (the default) waits as long as a cell needs: a slow or busy
            machine is not an error. Tests pass a generous value only as a hang guard.
        env: environment variables for the kernel (the notebooks' parameter cells read LAB_*).
    """
    import nbformat
    from nbclient import NotebookClient

    workdir = writable_dir(Path(out) / path.stem)
    nb = nbformat.read(path, as_version=4)
    # the kernel's own log is a warning about TCP on loopback per notebook: noise in a headless run
    # shutdown_kernel="immediate": on Ctrl-C or SIGTERM the kernel is killed, not waited for (a minute)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}},
                            extra_arguments=["--log-level=ERROR"], shutdown_kernel="immediate")
    # the kernel inherits this process's environment; lab importable even without an install
    env = {**(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except Exception as err:  # CellExecutionError, CellTimeoutError, DeadKernelError, ...: a result, not a crash
        error = _one_line(err)
    except KeyboardInterrupt:
        error = "KeyboardInterrupt: interrupted"
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # nbclient's own SIGINT/SIGTERM handler kills the kernel, and the cell then fails with another error
        signalled = hasattr(client, "_async_cleanup_kernel_future")
        error = "interrupted (SIGINT or SIGTERM)" if signalled else error
        executed = workdir / path.name
        nbformat.write(nb, executed)  # what ran is kept, whatever stopped it
    if signalled:
        raise KeyboardInterrupt(f"{path.name} stopped; what ran is saved in {executed}")
    return NotebookRun(str(path), str(executed), time.perf_counter() - start, error)


def prepare_demo(echo: Callable[[str], None] = print) -> dict[str, float | str]:
    """One-time setup before any notebook runs: build (or load) optimum-quanto's C++ extension.

    quanto compiles it with the system compiler the first time an int4/int2 weight is unpacked, which
    takes minutes on 2 cores and prints nothing; done here, it is a visible step outside every cell.
    Returns seconds per step, or the reason a step was skipped.
    """
    done: dict[str, float | str] = {}
    echo("preparing: optimum-quanto's C++ extension (built once, minutes on a cold machine) ...")
    start = time.perf_counter()
    try:
        import optimum.quanto as q
        import torch
        from optimum.quanto.library.extensions import get_extension

        get_extension("quanto_cpp").lib  # noqa: B018 - loading it builds it when absent
        layer = torch.nn.Sequential(torch.nn.Linear(64, 64))  # quantize() replaces children, not the root
        q.quantize(layer, weights=q.qint4)
        q.freeze(layer)
        with torch.no_grad():
            layer(torch.randn(2, 64))  # the unpack op the int4 recipes call
        done["quanto_extension_s"] = round(time.perf_counter() - start, 2)
        echo(f"  ready in {done['quanto_extension_s']:.1f} s")
    except Exception as err:  # no compiler or no quanto: the quanto recipes report it themselves
        done["quanto_extension_s"] = f"skipped: {type(err).__name__}: {err}"
        echo(f"  skipped ({type(err).__name__}: {str(err)[:200]})")
    return done


def _kind(path: Path) -> str:
    return KINDS.get(path.suffix, "other")


def write_index(out: str | os.PathLike, runs: Sequence[NotebookRun], *, total_s: float | None = None,
                prepare: dict | None = None) -> dict[str, Path]:
    """Write ``index.md``, ``index.html`` and ``index.json`` in ``out``: each notebook's status and seconds,
    then every artifact under its folder (executed notebook, plots, reports, traces, data). Returns the paths."""
    out = Path(out)
    rows, sections = [], []
    for run in runs:
        folder = Path(run.executed).parent
        files = sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts
                       and not p.name.startswith("."))  # run locks and temporary files are no artifacts
        rel = [p.relative_to(out).as_posix() for p in files]
        rows.append({"notebook": Path(run.notebook).stem, "status": run.status, "seconds": round(run.seconds, 1),
                     "error": run.error, "executed": Path(run.executed).relative_to(out).as_posix(),
                     "artifacts": [{"path": r, "kind": _kind(p), "bytes": p.stat().st_size}
                                   for r, p in zip(rel, files)]})
        sections.append((rows[-1], files))
    failed = sum(r["status"] != "ok" for r in rows)
    summary = f"{len(rows) - failed} of {len(rows)} notebooks ran without error"
    if total_s is not None:
        summary += f" in {total_s:.0f} s"

    md = ["# diffusion-lab demo: artifacts", "", summary + ".", "",
          "| notebook | status | seconds | executed notebook |", "|---|---|---:|---|"]
    for r in rows:
        status = r["status"] if not r["error"] else f"failed: {r['error'][:120]}"
        md.append(f"| {r['notebook']} | {status.replace('|', '/')} | {r['seconds']:.0f} | [{r['executed']}]({r['executed']}) |")
    md.append("")
    for r in rows:
        md += [f"## {r['notebook']}", ""]
        md += [f"- [{a['path']}]({a['path']}) ({a['kind']}, {a['bytes'] / 1024:.0f} KiB)" for a in r["artifacts"]]
        md.append("")
    body = ["<h1>diffusion-lab demo: artifacts</h1>", f"<p>{html.escape(summary)}.</p>",
            "<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>executed notebook</th></tr>"]
    for r in rows:
        colour = "#070" if r["status"] == "ok" else "#b00"
        status = html.escape(r["status"] if not r["error"] else f"failed: {r['error'][:200]}")
        link = html.escape(r["executed"])
        body.append(f"<tr><td>{html.escape(r['notebook'])}</td><td style='color:{colour}'>{status}</td>"
                    f"<td>{r['seconds']:.0f}</td><td><a href='{link}'>{link}</a></td></tr>")
    body.append("</table>")
    for r in rows:
        body.append(f"<h2>{html.escape(r['notebook'])}</h2><ul>")
        for a in r["artifacts"]:
            p = html.escape(a["path"])
            thumb = f"<br><img src='{p}' style='max-width:480px'>" if a["kind"] == "plot" else ""
            body.append(f"<li><a href='{p}'>{p}</a> ({a['kind']}, {a['bytes'] / 1024:.0f} KiB){thumb}</li>")
        body.append("</ul>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>diffusion-lab demo</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:2px 8px;text-align:left}"
            "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    paths = {"markdown": out / "index.md", "html": out / "index.html", "json": out / "index.json"}
    atomic_write_text(paths["markdown"], "\n".join(md))
    atomic_write_text(paths["html"], page)
    atomic_write_text(paths["json"], json.dumps({"summary": summary, "total_s": total_s, "prepare": prepare or {},
                                                 "notebooks": rows}, indent=2))
    return paths


def run_demo(out: str | os.PathLike, paths: Sequence[Path] | None = None, *, env: dict[str, str] | None = None,
             timeout: int | None = None, prepare: bool = True,
             echo: Callable[[str], None] = print) -> tuple[list[NotebookRun], dict[str, Path]]:
    """The main job: one-time setup, then every notebook (a failure never stops the next), then the index."""
    from .paths import run_lock

    out = writable_dir(out)
    paths = list(paths if paths is not None else notebook_paths())
    with run_lock(out):  # a second demo into this folder fails at once
        start = time.perf_counter()
        prepared = prepare_demo(echo) if prepare else {}
        runs: list[NotebookRun] = []
        try:
            for i, path in enumerate(paths, start=1):
                echo(f"[{i}/{len(paths)}] running {path.name} ...")
                began = time.perf_counter()
                try:
                    run = run_notebook(path, out, timeout=timeout, env=env)
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM: its executed copy is saved; index what ran
                    runs.append(NotebookRun(str(path), str(Path(out) / path.stem / path.name),
                                            time.perf_counter() - began, "interrupted"))
                    raise
                echo(f"  {'FAILED: ' + run.error if run.error else 'ok'} in {run.seconds:.0f} s -> {run.executed}")
                runs.append(run)
        finally:
            index = write_index(out, runs, total_s=time.perf_counter() - start, prepare=prepared)
            atomic_write_text(out / "runs.json", json.dumps([asdict(r) for r in runs], indent=2))
            echo(f"\nindex of every artifact: {index['html'].resolve()} (and index.md)")
    return runs, index
