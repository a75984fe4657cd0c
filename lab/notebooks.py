"""Execute the numbered notebooks headless (nbclient), each in its own artifact folder."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ._checks import writable_dir
from .env import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), optionally only those whose stem starts with a name."""
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in names)]
    return paths


@dataclass
class NotebookRun:
    notebook: str
    executed: str
    seconds: float
    error: str | None = None


def run_notebook(path: Path, out: str | os.PathLike, *, timeout: int = 600, env: dict[str, str] | None = None) -> NotebookRun:
    """Execute ``path`` with its working directory in ``out/<stem>``; save the executed copy there.

    Args:
        env: environment variables for the kernel (the notebooks' parameter cells read LAB_*).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    workdir = writable_dir(Path(out) / path.stem)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    # the kernel inherits this process's environment; lab importable even without an install
    env = {**(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except CellExecutionError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # drop the traceback's colour codes
        error = text.splitlines()[-1] if text else repr(err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    executed = workdir / path.name
    nbformat.write(nb, executed)
    return NotebookRun(str(path), str(executed), time.perf_counter() - start, error)
