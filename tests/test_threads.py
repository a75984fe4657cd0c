import pytest

import lab
from lab import plots
from lab.recipes import parse
from lab.threads import ThreadPoint, ThreadScaling, check_threads, cpu_cores, thread_sweep

CASE = lab.Case("a red circle on the left", steps=1, name="circle")


def test_threads_recipe_refuses_what_is_not_allowed():
    cores = cpu_cores()
    for bad in ("threads-0", "threads-x", "threads--1"):
        with pytest.raises(lab.LabError, match=f"threads-1 to threads-{cores}"):
            parse(bad)
    over = parse(f"fp32+threads-{cores + 1}")
    assert over.check(lab.RecipeEnv.detect("cpu")) == {
        f"threads-{cores + 1}": f"threads-{cores + 1} asks for more threads than the {cores} CPU cores here "
                                f"(threads-1 to threads-{cores})"}
    assert parse(f"threads-{cores}+fp32").recipes[0].name == f"threads-{cores}"  # applied first
    with pytest.raises(lab.LabError, match="both set threads"):
        parse("threads-1+threads-2")
    for bad in ([], [0], [cores + 1], [1.5], [True]):
        with pytest.raises(lab.LabError, match=f"from 1 to {cores}"):
            check_threads(bad)
    assert check_threads([2, 1, 1][: cores + 1]) == sorted({1, 2} & set(range(1, cores + 1)))


def test_a_run_uses_its_threads_and_gives_them_back(tmp_path):
    import torch

    before = torch.get_num_threads()
    cores = cpu_cores()
    counts = sorted({1, cores})
    scaling = thread_sweep("tiny", [CASE], threads=counts, out=tmp_path / "t", repeats=1, warmup=0,
                           progress=False, isolate=False)
    assert torch.get_num_threads() == before  # in-process, the next run gets the process's own count back
    cmp = lab.Comparison.load(tmp_path / "t")
    for n in counts:
        assert cmp.record(f"threads-{n}", "circle").threads["intra_op"] == n
        assert scaling.point(n).latency_s > 0 and scaling.point(n).status == "ok"
    assert scaling.point(1).speedup == 1.0 and scaling.best in counts and scaling.cores == cores
    assert len(scaling.load_before) == 3 and scaling.why_best() in scaling.to_markdown()
    assert ThreadScaling.load(tmp_path / "t" / "thread_scaling.json") == scaling
    # a threads-1 baseline (primed, then measured) leaves a recipe without threads-N the process's own count
    cmp = lab.compare("tiny", ["threads-1", "fp32"], [CASE], repeats=1, warmup=0, out=tmp_path / "c",
                      progress=False, isolate=False)
    assert cmp.record("fp32", "circle").threads["intra_op"] == before
    with pytest.raises(lab.LabError, match="already sets threads"):
        thread_sweep("tiny", [CASE], recipe="fp32+threads-1", out=tmp_path / "x")


def test_an_isolated_run_sets_its_inter_op_threads_too(tmp_path):
    scaling = thread_sweep("tiny", [CASE], threads=[1], out=tmp_path / "t", repeats=1, warmup=0, progress=False,
                           isolate=True)
    record = lab.Comparison.load(tmp_path / "t").record("threads-1", "circle")
    assert record.threads == {"intra_op": 1, "inter_op": 1} and scaling.point(1).inter_op == 1
    assert record.worker and record.worker["pid"]


def _scaling(latencies: dict[int, float]) -> ThreadScaling:
    first = min(latencies)
    points = [ThreadPoint(n, t, 0.1 * t, latencies[first] / t, latencies[first] / t / (n / first), 100.0 * n)
              for n, t in sorted(latencies.items())]
    return ThreadScaling(model="sd15-arch", recipe="fp32", device="cpu", cores=len(points), points=points, out="x")


def test_hardware_plan_takes_the_measured_best_and_the_plot_shows_it():
    env = lab.RecipeEnv.detect("cpu")
    plain = lab.hardware_plan(env)
    assert not plain.recipe.startswith("threads-")
    measured = lab.hardware_plan(env, thread_scaling=_scaling({1: 2.0, 2: 1.2, 3: 1.3}))
    assert measured.threads == 2 and measured.recipe.startswith("threads-2+")
    assert "fastest count measured" in measured.reasons[0] and "1.67x over 1" in measured.reasons[0]
    parse(measured.recipe)  # the plan's recipe is a valid recipe string
    fig = plots.plot_thread_scaling(_scaling({1: 2.0, 2: 1.2, 3: 1.3}))
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2, 3] and any("best: 2" in t.get_text() for t in ax.texts)
    assert not plots.layout_problems(fig)


def test_more_threads_that_are_not_distinguishably_faster_are_not_taken():
    scaling = _scaling({1: 2.0, 2: 1.9})
    scaling.points[1].verdict = "not distinguishable"
    assert scaling.best == 1 and "no count was distinguishably faster than 1" in scaling.why_best()
    plan = lab.hardware_plan(lab.RecipeEnv.detect("cpu"), thread_scaling=scaling)
    assert plan.threads == 1 and "2: 1.05x, not distinguishable" in plan.reasons[0]
    scaling.points[1].verdict = "faster"
    assert scaling.best == 2 and "distinguishably faster than 1" in scaling.why_best()
    again = ThreadScaling.from_dict(scaling.to_dict())
    assert again.points[1].verdict == "faster" and again.best == 2
