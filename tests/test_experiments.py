import json
import math

import pytest

import lab
from lab.experiments import RESULTS, Comparison, compare
from lab.recipes import Plan

CASES = [lab.Case("a red circle", steps=2, name="circle"), lab.Case("a blue square", steps=2, name="square")]
RECIPES = ["fp32", "bf16", "steps-1", "model-cpu-offload"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    return out, compare("tiny", RECIPES, CASES, seeds=(0, 1), repeats=1, warmup=0, out=out, device="cpu",
                        progress=False)


def test_every_run_is_recorded_with_its_status(run):
    out, cmp = run
    lines = (out / RESULTS).read_text().splitlines()
    assert len(lines) == len(RECIPES) * len(CASES) * 2
    assert {r.status for r in cmp.records if r.recipe != "model-cpu-offload"} == {"ok"}
    skipped = [r for r in cmp.records if r.recipe == "model-cpu-offload"]
    assert {r.status for r in skipped} == {"skipped"} and "CPU memory" in skipped[0].error


def test_quality_against_the_baseline_image(run):
    out, cmp = run
    base = cmp.record("fp32", "circle", 0)
    assert base.ssim == 1.0 and math.isinf(base.psnr)
    bf16 = cmp.record("bf16", "circle", 0)
    assert 0.3 < bf16.ssim < 1.0 and bf16.psnr < math.inf
    assert (out / bf16.image).exists() and cmp.record("steps-1", "square", 1).steps == 1


def test_comparison_frame(run):
    _, cmp = run
    frame = cmp.to_frame()
    assert list(frame.index) == RECIPES
    for col in ("latency_s", "latency_iqr_s", "speedup", "peak_mem_mb", "peak_mem_delta_mb", "weight_mb", "ssim",
                "psnr", "status"):
        assert col in frame.columns, col
    assert frame.loc["fp32", "speedup"] == pytest.approx(1.0) and frame.loc["fp32", "peak_mem_delta_mb"] == 0
    assert frame.loc["bf16", "weight_mb"] == pytest.approx(frame.loc["fp32", "weight_mb"] / 2, rel=0.01)
    assert frame.loc["model-cpu-offload", "status"] == "skipped"
    assert "| bf16" in cmp.to_markdown()


def test_rerun_skips_finished_runs(run):
    out, _ = run
    before = (out / RESULTS).read_text()
    again = compare("tiny", RECIPES, CASES, seeds=(0, 1), repeats=1, warmup=0, out=out, progress=False)
    assert (out / RESULTS).read_text() == before and len(again.records) == 16


def test_resume_after_a_crash_runs_only_what_is_missing(tmp_path):
    compare("tiny", ["fp32", "bf16"], CASES[:1], repeats=1, warmup=0, out=tmp_path, progress=False)
    lines = (tmp_path / RESULTS).read_text().splitlines()
    (tmp_path / RESULTS).write_text(lines[0] + "\n")  # as if killed after the first run
    cmp = compare("tiny", ["fp32", "bf16"], CASES[:1], repeats=1, warmup=0, out=tmp_path, progress=False)
    new_lines = (tmp_path / RESULTS).read_text().splitlines()
    assert new_lines[0] == lines[0] and len(new_lines) == 2 and json.loads(new_lines[1])["recipe"] == "bf16"
    assert cmp.record("bf16", CASES[0].name).status == "ok"


def test_a_corrupt_line_is_reported_and_the_rest_kept(run, tmp_path):
    out, cmp = run
    lines = (out / RESULTS).read_text().splitlines()
    (tmp_path / RESULTS).write_text("\n".join(lines[:3] + ['{"recipe": "fp32", broken'] + lines[3:]) + "\n")
    with pytest.warns(UserWarning, match=rf"{RESULTS}:4: corrupt line"):
        loaded = Comparison.load(tmp_path)
    assert loaded.corrupt_lines == [4] and len(loaded.records) == len(lines)


def test_a_run_that_raises_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real_apply = Plan.apply

    def apply(self, pipe, cases=None):
        if self.text == "bf16":
            raise RuntimeError("simulated failure")
        return real_apply(self, pipe, cases)

    monkeypatch.setattr(Plan, "apply", apply)
    cmp = compare("tiny", ["fp32", "bf16", "steps-1"], CASES[:1], repeats=1, warmup=0, out=tmp_path, progress=False)
    assert cmp.record("bf16", "circle").status == "error"
    assert cmp.record("bf16", "circle").error == "RuntimeError: simulated failure"
    assert cmp.record("steps-1", "circle").status == "ok"


def test_out_of_memory_is_its_own_status(tmp_path, monkeypatch):
    import torch

    from lab import benchmarking

    real = benchmarking._run_case

    def run_case(pipe, timer, case, *args):
        if case.steps == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, timer, case, *args)

    monkeypatch.setattr(benchmarking, "_run_case", run_case)
    cmp = compare("tiny", ["fp32", "steps-1"], CASES[:1], repeats=1, warmup=0, out=tmp_path, progress=False)
    assert cmp.record("steps-1", "circle").status == "oom" and cmp.record("fp32", "circle").status == "ok"


@pytest.mark.parametrize("recipes, message", [(["fp32", "bf16+fp16"], "cannot combine"),
                                              (["fp32", "bf17"], "unknown recipe 'bf17'"), ([], "at least one")])
def test_bad_recipes_fail_before_any_work(tmp_path, recipes, message):
    with pytest.raises(lab.LabError, match=message):
        compare("tiny", recipes, CASES, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_recipe_whose_first_step_is_nan_is_an_error_not_a_result(tmp_path, monkeypatch):
    import torch

    from lab import fidelity

    real = fidelity.first_step_update

    def broken(pipe, case):  # what compiled quanto int8 + fused QKV gave on an Intel Xeon: NaN everywhere
        update = real(pipe, case)
        return update * float("nan") if pipe.unet.dtype == torch.bfloat16 else update

    monkeypatch.setattr(fidelity, "first_step_update", broken)
    cmp = compare("tiny", ["fp32", "bf16"], CASES[:1], repeats=1, warmup=0, out=tmp_path, progress=False)
    bad = cmp.record("bf16", CASES[0].name)
    assert bad.status == "error" and "NaN or inf" in bad.error and cmp.record("fp32", CASES[0].name).status == "ok"
    assert "bf16" not in cmp.verdicts()  # no speed-up is read off garbage
