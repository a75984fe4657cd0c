import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.benchmarking import BenchmarkResult

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0 and "bench" in out.stdout


def test_bench_end_to_end(tmp_path):
    out = run("bench", "--model", "tiny", "--steps", "2", "--repeats", "2", "--cases", "2", "--quiet",
              "--out", str(tmp_path / "x"))
    assert out.returncode == 0, out.stderr
    result = BenchmarkResult.load(tmp_path / "x" / "results.json")
    assert [c.latency.n for c in result.cases] == [2, 2]
    assert all(c.case.steps == 2 for c in result.cases)
    # tiny (the default model) defaults to the shapes prompt set it was trained for
    assert sorted(p.name for p in (tmp_path / "x" / "images").iterdir()) == [
        "red-circle-blue-circle-black.png", "red-triangle-gray.png"]
    assert "| red-triangle-gray" in out.stdout and "results.json" in out.stdout
    assert "benchmark:" not in out.stderr  # --quiet: no progress bar


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dtype", "fp64"], ["'fp64'", "fp32, fp16, bf16"]),
        (["--device", "tpu"], ["'tpu'", "auto, cpu, cuda, mps"]),
        (["--scheduler", "eular"], ["'eular'", "euler"]),
        (["--model", "someorg/some-model"], ["someorg/some-model", "local folder"]),
    ],
)
def test_bad_names_exit_2_with_guidance(tmp_path, args, words):
    out = run("bench", *args, "--steps", "1", "--repeats", "1", "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert all(w in out.stderr for w in words), out.stderr
    assert not (tmp_path / "o").exists()  # refused before any model was loaded or file written


def test_bad_counts_are_rejected_by_the_parser(tmp_path):
    out = run("bench", "--repeats", "0", "--out", str(tmp_path))
    assert out.returncode == 2 and "--repeats: must be an integer >= 1, got '0'" in out.stderr


def test_unwritable_out_fails_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run("bench", "--out", str(blocker / "sub"))
    assert out.returncode == 2 and "not writable" in out.stderr and str(blocker / "sub") in out.stderr


def test_malformed_prompt_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"cases": [{"prompt": "ok"}, {"steps": 3}]}))
    out = run("bench", "--prompts", str(bad), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "case 1" in out.stderr


def test_diagnose_writes_every_artifact(tmp_path):
    out = run("diagnose", "--model", "tiny", "--steps", "3", "--cases", "1", "--repeats", "1", "--quiet",
              "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    from lab.diagnosis import Diagnosis
    from lab.flops import FlopsReport
    from lab.profiling import ProfileResult

    for name in ("stages.png", "resources.png", "utilisation.png", "trace.json.gz", "diagnosis.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert ProfileResult.load(tmp_path / "profile.json").record_steps == 2
    assert FlopsReport.load(tmp_path / "flops.json").stage("denoiser").flops > 0
    assert isinstance(Diagnosis.load(tmp_path / "diagnosis.json").findings, list)
    assert list((tmp_path / "tensorboard" / "tiny-red-circle-blue-circle-black").glob("*.pt.trace.json"))
    assert "tensorboard --logdir" in out.stdout and "| rule" in out.stdout


def test_profile_rejects_too_many_record_steps(tmp_path):
    out = run("profile", "--steps", "3", "--record-steps", "9", "--out", str(tmp_path))
    assert out.returncode == 2 and "--record-steps 9 is more than the case's 3 steps" in out.stderr


@pytest.mark.slow
def test_demo_runs_the_notebooks(tmp_path):
    out = run("demo", "--notebooks", "01", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "01_diagnose" / "01_diagnose.ipynb").exists()
    assert (tmp_path / "01_diagnose" / "artifacts" / "trace.json.gz").exists()
    assert str(tmp_path) in out.stdout


def test_compare_end_to_end_and_resume(tmp_path):
    args = ("compare", "--model", "tiny", "--recipes", "fp32,bf16,model-cpu-offload", "--steps", "2", "--cases", "1",
            "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(tmp_path))
    out = run(*args)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["ok", "ok", "skipped"]
    assert "| bf16" in out.stdout and (tmp_path / "comparison.md").exists()
    assert run(*args).returncode == 0
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines  # resumed: nothing re-run


def test_compare_refuses_bad_recipes_before_work(tmp_path):
    out = run("compare", "--recipes", "fp32,bf16+fp16", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "cannot combine 'bf16' and 'fp16'" in out.stderr
    assert not (tmp_path / "o").exists()


def test_the_method_on_a_transformer_from_the_command_line(tmp_path):
    """diagnose, compare and report on tiny-flux work as on tiny; an unfit recipe is a skipped run with its reason."""
    diag = run("diagnose", "--model", "tiny-flux", "--steps", "2", "--record-steps", "1", "--repeats", "1",
               "--out", str(tmp_path / "diag"), timeout=900)
    assert diag.returncode == 0, diag.stderr
    from lab.flops import FlopsReport

    report = FlopsReport.load(tmp_path / "diag" / "flops.json")
    assert report.stage("denoiser").flops == pytest.approx(2 * report.step_flops, rel=1e-6)
    out = tmp_path / "cmp"
    cmp = run("compare", "--model", "tiny-flux", "--recipes", "fp32,bf16,attention-slicing", "--steps", "2",
              "--repeats", "1", "--cases", "1", "--quiet", "--out", str(out), timeout=900)
    assert cmp.returncode == 0, cmp.stderr
    rows = {r["recipe"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["bf16"]["status"] == "ok" and rows["bf16"]["fidelity"]["cosine"] > 0.99
    assert rows["attention-slicing"]["status"] == "skipped" and "transformer" in rows["attention-slicing"]["error"]
    rep = run("report", str(out))
    assert rep.returncode == 0, rep.stderr and (out / "report.md").is_file()


def test_an_architecture_too_large_for_this_machine_is_refused_before_loading(tmp_path):
    out = run("bench", "--model", "flux-arch", "--dtype", "bf16", "--steps", "1", "--repeats", "1",
              "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr
    assert "does not fit this machine" in out.stderr and "bytes" in out.stderr and "free" in out.stderr
    assert not (tmp_path / "o").exists()
