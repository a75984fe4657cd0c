import pytest

import lab
from lab.presets import TIERS, preset, recommend
from lab.env import RecipeEnv
from lab.recipes import parse

CPU_AMX = RecipeEnv("cpu", cpu_flags=("avx512f", "amx_bf16"))
CPU_OLD = RecipeEnv("cpu", cpu_flags=("avx2",))
GPU_SMALL = RecipeEnv("cuda", cuda_capability=(8, 6), cuda_memory_gb=12.0)
GPU_BIG = RecipeEnv("cuda", cuda_capability=(9, 0), cuda_memory_gb=80.0)


@pytest.mark.parametrize("env", [CPU_AMX, CPU_OLD, GPU_SMALL, GPU_BIG], ids=["amx", "avx2", "gpu12", "gpu80"])
@pytest.mark.parametrize("tier", TIERS)
def test_every_tier_is_a_valid_composition(tier, env):
    plan = parse(preset(tier, env))
    names = [r.name for r in plan.recipes]
    assert "attention-slicing" not in names  # the seed's slicing-with-SDPA slows things down
    assert not ("sequential-cpu-offload" in names and any(n.startswith("compile") for n in names))
    if not env.cuda:
        assert plan.check(env) == {}, plan.check(env)


def test_precision_follows_the_hardware():
    assert preset("basic", CPU_AMX).startswith("bf16+")
    assert preset("basic", CPU_OLD).startswith("fp32+")
    assert preset("basic", GPU_SMALL).startswith("fp16+")
    assert "model-cpu-offload" in preset("advanced", GPU_SMALL)
    assert "model-cpu-offload" not in preset("advanced", GPU_BIG)
    assert "quanto" not in preset("advanced", CPU_AMX)  # no fast int8 kernel path on CPU


def test_recommender_walks_the_decision_tree():
    small = recommend(GPU_SMALL, "speed")
    assert "quanto-denoiser-int4w" in small.recipe and "model-cpu-offload" in small.recipe
    assert any("consumer" in r for r in small.reasons)
    big = recommend(GPU_BIG, "speed")
    assert "compile-denoiser-reduce-overhead" in big.recipe and "quanto" not in big.recipe and "autotune" not in big.recipe
    cpu = recommend(CPU_AMX, "quality")
    assert cpu.recipe.startswith("bf16") and "compile" not in cpu.recipe and "steps" not in cpu.recipe
    assert "steps-12" in recommend(CPU_AMX, "speed").recipe
    assert "quanto-denoiser-int8w" in recommend(CPU_OLD, "balance", memory_budget=2).recipe
    assert "recommended:" in str(cpu)
    for env in (GPU_SMALL, GPU_BIG, CPU_AMX, CPU_OLD):
        for priority in ("quality", "balance", "speed"):
            parse(recommend(env, priority).recipe)


def test_a_budget_overrides_the_gpu_memory():
    assert "model-cpu-offload" in recommend(GPU_BIG, "balance", memory_budget=8).recipe


def test_bad_priority_and_budget():
    with pytest.raises(lab.LabError, match="unknown priority 'fast'.*quality, balance, speed"):
        recommend(CPU_AMX, "fast")
    with pytest.raises(lab.LabError, match="memory_budget"):
        recommend(CPU_AMX, memory_budget=0)
    with pytest.raises(lab.LabError, match="unknown tier"):
        preset("ultra", CPU_AMX)
