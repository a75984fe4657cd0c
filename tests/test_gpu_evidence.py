"""CUDA-only logic tested on CPU with what was recorded on an H100 (tests/data/h100, copied from
shared/gpu-evidence/2026-11-25-h100: `lab diagnose --model sd15-arch --device cuda --dtype fp16 --size 512
--steps 4`, the ladder and compare runs). The figures these tests expect are the evidence's own."""

import gzip
import json
from pathlib import Path

import pytest

import lab
from lab.benchmarking import BenchmarkResult
from lab.env import RecipeEnv
from lab.flops import FlopsReport, Peak, utilisation
from lab.profiling import ProfileResult, op_kind, short_kernel_name

DATA = Path(__file__).parent / "data" / "h100"
H100 = RecipeEnv("cuda", cuda_capability=(9, 0), cuda_memory_gb=79.1, packages=frozenset({"optimum.quanto"}))


@pytest.fixture(scope="module")
def recorded():
    return (BenchmarkResult.load(DATA / "benchmark.json"), ProfileResult.load(DATA / "profile.json"),
            FlopsReport.load(DATA / "flops.json"))


def test_recorded_results_load_into_todays_records(recorded):
    bench, prof, flops = recorded
    assert bench.device.startswith("cuda") and prof.device.startswith("cuda") and flops.peak.dtype == "fp16"
    # each range was recorded twice (host range, then its GPU annotation): split, not double-counted
    assert [s.stage for s in prof.spans].count("denoiser_step_0") == 1
    assert [s.stage for s in prof.device_spans].count("denoiser_step_0") == 1
    assert prof.stages()["share"].sum() == pytest.approx(1.0)


def test_ops_and_kernels_are_kept_apart(recorded):
    _, prof, _ = recorded
    ops = prof.ops(stage="denoiser", top=None)
    assert all(name.startswith("aten::") for name in ops.index), list(ops.index)
    assert ops.index[0] == "aten::cudnn_convolution" and "self_device_ms" in ops.columns
    kernels = prof.kernels(stage="denoiser", top=None)
    assert len(kernels) > 10 and max(len(k) for k in kernels.index) <= 60
    assert "nchwToNhwcKernel" in kernels.index and "RowwiseMomentsCUDAKernel" in kernels.index
    assert not any(k.startswith(("void", "aten::", "cuda")) or "<" in k for k in kernels.index)
    full = prof.kernels(stage="denoiser", top=3, full=True)
    assert all(len(n) > 0 for names in full["names"] for n in names)
    # kernel time per step equals the sum of the kernel rows of the two recorded steps
    rows = [r for r in prof.op_records if r.kind == "kernel" and r.stage.startswith("denoiser_step_")]
    assert kernels["device_ms"].sum() == pytest.approx(sum(r.self_device_us for r in rows) / 1e3, abs=0.01)


@pytest.mark.parametrize("name, short", [
    ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::Half>(long, c10::Half, c10::Half*)",
     "RowwiseMomentsCUDAKernel"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::CUDAFunctor_add"
     "<c10::Half> >(at::TensorIteratorBase&, at::native::CUDAFunctor_add<c10::Half> const&)::{lambda(int)#1}>"
     "(int, at::native::gpu_kernel_impl_nocast<...>::{lambda(int)#1})", "elementwise_kernel"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_execute"
     "_segment_k_off_kernel__5x_cudnn", "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nh…"),
])
def test_short_kernel_names(name, short):
    assert short_kernel_name(name) == short


def test_op_kind():
    assert op_kind("cudaLaunchKernel", 5.0, 0.0, True) == "runtime"
    assert op_kind("cuLaunchKernelEx", 5.0, 0.0, True) == "runtime"
    assert op_kind("aten::mm", 0.0, 3.0, True) == "op"
    assert op_kind("void foo<int>(int)", 0.0, 3.0, True) == "kernel"
    assert op_kind("ProfilerStep#3", 9.0, 0.0, True) == "profiler"
    assert op_kind("aten::mm", 3.0, 0.0, False) == "op"


def test_only_the_pipelines_own_synchronisations_count(recorded):
    _, prof, _ = recorded
    # per step the trace holds 3 cudaStreamSynchronize (the pipeline's .item()) and 1 cudaDeviceSynchronize
    # (lab's stage timer): 10 were reported when aten::item and its _local_scalar_dense were counted too
    assert prof.syncs()["denoiser_step_0"] == 3 and prof.syncs()["denoiser_step_1"] == 3


def test_launch_bound_names_cuda_graphs_first(recorded):
    bench, prof, flops = recorded
    busy = prof.device_busy()
    assert busy["denoiser_step_0"] == pytest.approx(0.1855, abs=0.002)  # 12.3 ms of kernels in a 66 ms step
    d = lab.diagnose(bench, profile=prof, flops=flops)
    first = d.findings[0]
    assert first.rule == "launch-bound" and first.suggest[0] == "compile-denoiser-reduce-overhead"
    assert first.evidence["host_cpu_percent"] == pytest.approx(125.1, abs=0.1)
    sync = next(f for f in d.findings if f.rule == "host-device-sync")
    assert sync.evidence["syncs_per_step"] == 3.0
    assert next(f for f in d.findings if f.rule == "cpu-bound-host").suggest[0] == "compile-denoiser-reduce-overhead"


def test_utilisation_against_the_right_peak(recorded):
    _, _, flops = recorded
    unet = flops.stage("denoiser")
    under_read = Peak("cuda:0", "fp16", 344e12, 2048, 1.0)
    right = Peak("cuda:0", "fp16", 740e12, 8192, 1.0)
    assert utilisation(unet.achieved_flops_per_s, right) == pytest.approx(6.47, abs=0.01)
    assert utilisation(unet.achieved_flops_per_s, under_read) / utilisation(unet.achieved_flops_per_s, right) \
        == pytest.approx(740 / 344)
    assert utilisation(800e12, right) is None  # above the peak: flagged, never > 100 %


def test_recorded_trace_is_a_chrome_trace():
    with gzip.open(DATA / "trace.json.gz", "rt") as f:
        trace = json.load(f)
    kernels = [e for e in trace["traceEvents"] if e.get("cat") == "kernel"]
    assert kernels and all(e["dur"] >= 0 for e in kernels)


def test_h100_advice_follows_the_evidence():
    plan = lab.hardware_plan(H100)
    assert "compile-denoiser-reduce-overhead" in plan.recipe and "max-autotune" not in plan.recipe
    assert any("70-90 s" in c for c in plan.costs)
    assert "compile-denoiser-reduce-overhead" in lab.preset("expert", H100)
    rec = lab.recommend(H100, "speed")
    assert "compile-denoiser-reduce-overhead" in rec.recipe and "autotune" not in rec.recipe
    assert any("first call" in r for r in rec.reasons)
    for recipe in (plan.recipe, rec.recipe, lab.preset("expert", H100)):
        assert not lab.recipes.parse(recipe).check(H100)


def test_fused_qkv_with_quanto_activations_is_refused_with_the_reason():
    with pytest.raises(lab.LabError, match="split of the fused QKV"):
        lab.recipes.parse("fp16+fused-qkv+quanto-unet-int8w-int8a")
    lab.recipes.parse("fp16+fused-qkv+quanto-unet-int8w")  # weight-only stays allowed
    lab.recipes.parse("fused-qkv+quanto-text-int8w-int8a")  # the text encoder is never fused


def test_fp8_recipe_says_where_it_runs():
    fp8 = lab.recipes.get("torchao-fp8dq")
    with_ao = frozenset({"torchao"})
    assert "8.9" in fp8.check(RecipeEnv("cpu", packages=with_ao))
    assert "8.9" in fp8.check(RecipeEnv("cuda", cuda_capability=(8, 0), packages=with_ao))
    assert "torchao is not installed" in fp8.check(RecipeEnv("cuda", cuda_capability=(9, 0)))
    assert fp8.check(RecipeEnv("cuda", cuda_capability=(9, 0), packages=with_ao)) is None


def test_tuned_compile_is_cuda_only_and_never_changes_inductor_on_cpu():
    import torch._inductor.config as inductor

    assert "CUDA" in lab.recipes.get("compile-unet-tuned").check(RecipeEnv("cpu"))
    assert lab.recipes.get("compile-unet-tuned").check(H100) is None
    assert inductor.coordinate_descent_tuning is False  # nothing set it in this process
