"""Isolated runs: a fresh worker process per recipe, through the local executor, submitit and Ray."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import lab
from lab.executors import ExecutorConfig
from lab.experiments import RESULTS, compare
from tests.test_reliability import assert_clean_refusal, lab_cli

ROOT = Path(__file__).resolve().parents[1]
CASE = lab.Case("a red circle", steps=1, name="c")
# no baseline recheck (one more worker a sweep) except in the tests that count it: submitit's and Ray's below
RUN = {"repeats": 1, "warmup": 0, "device": "cpu", "progress": False, "isolate": True, "recheck": False}


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def _workers() -> list[psutil.Process]:
    """This test process's running workers."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "lab.executors.worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # gone, or a zombie an earlier test left for its Popen to reap
            continue
    return found


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory):
    """Two recipes on two fake GPU slots: each in its own worker, side by side."""
    out = tmp_path_factory.mktemp("slots")
    cmp = compare("tiny-random", ["fp32", "bf16"], [CASE], out=out, executor=ExecutorConfig(devices=["0", "1"]),
                  **RUN)
    return out, cmp


def test_each_run_has_its_own_worker_process(two_slots):
    _, cmp = two_slots
    pids = {r.worker["pid"] for r in cmp.records}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {r.status for r in cmp.records} == {"ok"}


def test_two_fake_gpu_slots_give_two_cuda_visible_devices(two_slots):
    _, cmp = two_slots
    assert sorted(r.worker["cuda_visible_devices"] for r in cmp.records) == ["0", "1"]


def test_cache_directories_differ_per_worker_and_are_removed(two_slots):
    _, cmp = two_slots
    inductor = {r.worker["inductor_cache"] for r in cmp.records}
    triton = {r.worker["triton_cache"] for r in cmp.records}
    assert len(inductor) == len(triton) == 2 and not inductor & triton
    assert not any(Path(d).exists() for d in inductor | triton)  # cold: made for the worker, gone with it


def test_the_parent_computes_quality_from_what_the_worker_sent(two_slots):
    out, cmp = two_slots
    base, bf16 = cmp.record("fp32", "c"), cmp.record("bf16", "c")
    assert base.ssim == 1.0 and 0.3 < bf16.ssim < 1.0
    assert (out / bf16.image).stat().st_size > 0 and (out / "fidelity" / "bf16" / "c-s0.safetensors").exists()
    assert 0 < bf16.fidelity.cosine < 1 and bf16.fidelity.rel_error > 0 and base.fidelity.rel_error == 0.0
    assert len(_lines(out)) == 2


def test_a_warm_cache_is_shared_by_the_workers(tmp_path):
    cache = tmp_path / "cache"
    cmp = compare("tiny-random", ["fp32", "bf16"], [CASE], out=tmp_path / "out",
                  executor=ExecutorConfig(warm_cache=str(cache)), **RUN)
    assert {r.worker["inductor_cache"] for r in cmp.records} == {str(cache.resolve() / "inductor")}


def test_a_worker_killed_with_sigkill_is_recorded_and_the_sweep_goes_on(tmp_path):
    result = {}
    sweep = threading.Thread(target=lambda: result.update(cmp=compare("tiny-random", ["fp32", "bf16"], [CASE],
                                                                      out=tmp_path, **RUN)))
    sweep.start()
    deadline = time.monotonic() + 600
    while not (workers := _workers()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert workers, "no worker started"
    workers[0].send_signal(signal.SIGKILL)  # the first recipe's worker, as the OOM killer would
    sweep.join(timeout=1800)  # a hang guard only: a loaded machine is slow, not wrong
    assert not sweep.is_alive(), "the sweep did not finish"
    cmp = result["cmp"]
    killed = cmp.record("fp32", "c")
    assert killed.status == "error" and "SIGKILL" in killed.error and killed.worker["exit_code"] == -9
    assert cmp.record("bf16", "c").status == "ok"
    again = compare("tiny-random", ["fp32", "bf16"], [CASE], out=tmp_path, **RUN)  # errors are retried
    assert again.record("fp32", "c").status == "ok" and len(_lines(tmp_path)) == 3


def test_a_run_past_its_timeout_is_killed_and_recorded(tmp_path):
    cmp = compare("tiny-random", ["fp32"], [CASE], out=tmp_path, executor=ExecutorConfig(timeout_s=0.5), **RUN)
    record = cmp.record("fp32", "c")
    assert record.status == "error" and "0.5 s timeout" in record.error


def _sweep_script(out: Path, executor: str) -> list[str]:
    code = ("import sys, lab; from lab.executors import ExecutorConfig; from lab.experiments import compare\n"
            f"compare('tiny-random', ['fp32', 'bf16', 'steps-1'], [lab.Case('a red circle', steps=1, name='c')], "
            f"out=sys.argv[1], repeats=1, warmup=0, device='cpu', progress=False, isolate=True, recheck=False, "
            f"executor={executor})")
    return [sys.executable, "-c", code, str(out)]


def test_the_parent_killed_mid_sweep_and_restarted_runs_only_what_is_missing(tmp_path):
    parent = subprocess.Popen(_sweep_script(tmp_path, "'local'"), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while parent.poll() is None and time.monotonic() < deadline:
        if (tmp_path / RESULTS).exists() and (tmp_path / RESULTS).read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    first = (tmp_path / RESULTS).read_text().splitlines()
    assert 1 <= len(first) < 3, "the sweep finished before it could be killed"
    cmp = compare("tiny-random", ["fp32", "bf16", "steps-1"], [CASE], out=tmp_path, **RUN)
    lines = (tmp_path / RESULTS).read_text().splitlines()
    keys = [(d["recipe"], d["case"], d["seed"]) for d in map(json.loads, lines)]
    assert lines[:len(first)] == first and len(keys) == len(set(keys)) == 3
    assert {r.status for r in cmp.records} == {"ok"}


def test_compile_unet_tuned_inductor_globals_stay_in_its_worker(tmp_path, monkeypatch):
    """The recipe sets inductor's process-wide config: in-process it reaches every later recipe, isolated it cannot.

    The recipe needs CUDA, so its check is lifted and ``Module.compile`` made a no-op (in-process and, through a
    ``sitecustomize`` on the worker's path, in the worker): what runs is its real apply, which sets the globals.
    """
    import torch
    import torch._inductor.config as inductor

    import lab.recipes
    from lab.recipes.compile import TUNED_INDUCTOR

    recipe = lab.recipes.get("compile-unet-tuned")
    patch = tmp_path / "site"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import torch, lab.recipes\n"
        "object.__setattr__(lab.recipes.get('compile-unet-tuned'), 'check_fn', None)\n"
        "torch.nn.Module.compile = lambda self, *args, **kwargs: None\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(patch), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: None)
    before = {key: getattr(inductor, key) for key in TUNED_INDUCTOR}
    assert before != TUNED_INDUCTOR  # torch's defaults differ from the recipe's settings

    isolated = compare("tiny-random", ["compile-unet-tuned"], [CASE], out=tmp_path / "isolated", **RUN)
    assert isolated.record("compile-unet-tuned", "c").status == "ok"  # it applied, in its worker
    assert {key: getattr(inductor, key) for key in TUNED_INDUCTOR} == before

    check = recipe.check_fn
    with inductor.patch(dict(before)):  # puts the config back after the in-process run below leaks into it
        object.__setattr__(recipe, "check_fn", None)  # Recipe is frozen
        try:
            compare("tiny-random", ["compile-unet-tuned"], [CASE], out=tmp_path / "in-process",
                    **{**RUN, "isolate": False})
            assert {key: getattr(inductor, key) for key in TUNED_INDUCTOR} == TUNED_INDUCTOR  # the leak
        finally:
            object.__setattr__(recipe, "check_fn", check)
    assert {key: getattr(inductor, key) for key in TUNED_INDUCTOR} == before


# -- submitit (its LocalExecutor) and Ray (a local cluster with fake GPUs) --------------------------------
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="pip install .[slurm]")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="pip install .[ray]")
SUBMITIT = "ExecutorConfig(name='submitit', slurm_cluster='local')"


@needs_submitit
def test_submitit_runs_each_recipe_as_a_job_and_keeps_the_job_ids(tmp_path):
    cmp = compare("tiny-random", ["fp32", "bf16"], [CASE], out=tmp_path,
                  executor=ExecutorConfig(name="submitit", slurm_cluster="local"), **{**RUN, "recheck": True})
    assert {r.status for r in cmp.records} == {"ok"} and len({r.worker["pid"] for r in cmp.records}) == 2
    ledger = json.loads((tmp_path / ".jobs" / "submitit" / "jobs.json").read_text())
    # one job per recipe, and one more for the baseline measured again after them (a job of its own)
    ran = [r.worker["job_id"] for r in cmp.records + cmp.rechecks]
    assert sorted(e["job_id"] for e in ledger.values()) == sorted(ran) and len(set(ran)) == 3
    assert all(e["collected"] for e in ledger.values())
    assert cmp.record("bf16", "c").ssim < 1.0 == cmp.record("fp32", "c").ssim


@needs_submitit
def test_a_restarted_parent_collects_submitted_jobs_instead_of_rerunning_them(tmp_path):
    # no pipes: the jobs it starts would hold them open after it is killed
    parent = subprocess.Popen(_sweep_script(tmp_path, SUBMITIT), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ledger_path = tmp_path / ".jobs" / "submitit" / "jobs.json"
    deadline = time.monotonic() + 600
    while not ledger_path.exists() and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    parent.send_signal(signal.SIGKILL)  # the jobs were submitted; the parent is gone before any result
    parent.wait(timeout=60)
    submitted = {e["job_id"] for e in json.loads(ledger_path.read_text()).values()}
    assert len(submitted) == 3
    cmp = compare("tiny-random", ["fp32", "bf16", "steps-1"], [CASE], out=tmp_path,
                  executor=ExecutorConfig(name="submitit", slurm_cluster="local"), **RUN)
    assert {r.worker["job_id"] for r in cmp.records} == submitted  # collected, not submitted again
    assert {r.status for r in cmp.records} == {"ok"} and len(_lines(tmp_path)) == 3


@needs_ray
def test_ray_runs_one_task_per_fake_gpu(tmp_path):
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        cmp = compare("tiny-random", ["fp32", "bf16"], [CASE], out=tmp_path,
                      executor=ExecutorConfig(name="ray", ray_gpus=1), **{**RUN, "recheck": True})
    finally:
        ray.shutdown()
    assert {r.status for r in cmp.records} == {"ok"} and len({r.worker["pid"] for r in cmp.records}) == 2
    assert sorted(r.worker["cuda_visible_devices"] for r in cmp.records) == ["0", "1"]  # as Ray assigned them
    ledger = json.loads((tmp_path / ".jobs" / "ray" / "ray.json").read_text())
    # one task per recipe, and one more for the baseline's recheck after them
    ran = [r.worker["task_id"] for r in cmp.records + cmp.rechecks]
    assert sorted(e["task_id"] for e in ledger.values()) == sorted(ran) and len(set(ran)) == 3


# -- bad options ---------------------------------------------------------------------------------------------
BAD = [
    (["--executor", "slurm"], ["'slurm'", "local, submitit, ray"]),
    (["--workers", "0"], ["--workers", "0"]),
    (["--executor", "ray", "--slurm-time", "10"], ["--slurm-time", "--executor submitit"]),
    (["--executor", "submitit", "--workers", "2"], ["--workers", "--executor local"]),
    (["--timeout", "-1"], ["--timeout", "'-1'"]),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_executor_options_are_one_error_line_before_anything_runs(argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = lab_cli(capsys, "compare", "--model", "tiny-random", "--recipes", "fp32", *argv,
                                "--out", out)
    assert_clean_refusal(code, stdout, err, words, written=out)


@pytest.mark.parametrize("argv, extra", [(["--slurm-partition", "gpu"], "slurm"),
                                         (["--executor", "submitit"], "slurm"), (["--executor", "ray"], "ray")])
def test_an_executor_whose_package_is_missing_names_the_extra(argv, extra, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("submitit", "ray") else real(name, *a))
    out = tmp_path / "out"
    code, stdout, err = lab_cli(capsys, "compare", "--model", "tiny-random", "--recipes", "fp32", *argv,
                                "--out", out)
    assert_clean_refusal(code, stdout, err, [f"diffusion-lab[{extra}]"], written=out)


def test_the_cli_compares_in_isolated_workers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_ISOLATE", "1")
    code, _, err = lab_cli(capsys, "compare", "--model", "tiny-random", "--recipes", "fp32,bf16", "--steps", "1",
                           "--repeats", "1", "--warmup", "0", "--workers", "2", "--no-recheck", "--quiet",
                           "--out", tmp_path)
    assert code == 0, err
    lines = _lines(tmp_path)
    assert len({d["worker"]["pid"] for d in lines}) == 2 and {d["status"] for d in lines} == {"ok"}
