"""One denoiser everywhere: the UNet and the transformer are found, timed, profiled, counted and optimized
the same way; recipes and schedulers that cannot fit a model are refused before anything loads."""

import json

import numpy as np
import pytest
import torch

import lab
from lab import recipes
from lab.benchmarking import StageSummary
from lab.denoiser import canonical_stage, denoiser, denoiser_name, kind_of, model_kind
from lab.fidelity import Fidelity, first_step_update
from lab.flops import analytic_step_flops, step_batch, step_flops
from lab.models import build_embedded, load_model
from lab.recipes import fit_to_model, fitting, parse

FLUX_PROMPT = "a red circle on the left, white background"


@pytest.fixture(scope="module")
def flux_pipe():
    return lab.load_pipeline("tiny-flux", device="cpu")


def _call(pipe, steps=2, seed=0, **kwargs):
    out = pipe(FLUX_PROMPT, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return np.asarray(out.images[0])


@pytest.mark.parametrize("model, name, cls", [("tiny", "unet", "UNet2DConditionModel"),
                                              ("tiny-flux", "transformer", "FluxTransformer2DModel"),
                                              ("sd35m-arch", "transformer", "SD3Transformer2DModel")])
def test_model_kind_is_read_without_loading(model, name, cls):
    kind = model_kind(model)
    assert (kind.denoiser, kind.denoiser_class) == (name, cls)
    assert kind.flow_matching == (name == "transformer")
    assert kind.cache == (cls == "FluxTransformer2DModel")  # Flux's transformer is a CacheMixin, SD3's is not
    assert kind.repeated_blocks == (cls != "SD3Transformer2DModel")


def test_the_loaded_pipeline_agrees_with_its_index(flux_pipe, tiny_pipe):
    assert denoiser_name(flux_pipe) == "transformer" and denoiser(flux_pipe) is flux_pipe.transformer
    assert denoiser_name(tiny_pipe) == "unet" and denoiser(tiny_pipe) is tiny_pipe.unet
    assert kind_of(flux_pipe) == model_kind("tiny-flux") and kind_of(tiny_pipe) == model_kind("tiny")


def test_a_pipeline_without_a_denoiser_is_refused():
    class Empty:
        pass

    with pytest.raises(lab.LabError, match="neither a 'unet' nor a 'transformer'"):
        denoiser(Empty())


def test_stage_timer_times_every_transformer_step(flux_pipe):
    with lab.StageTimer(flux_pipe) as timer:
        _, times = timer.measure(flux_pipe, prompt=FLUX_PROMPT, num_inference_steps=3,
                                 generator=torch.Generator("cpu").manual_seed(0))
    assert len(times.denoiser_steps) == 3 and all(s > 0 for s in times.denoiser_steps)
    assert times.text_encoder > 0 and times.vae_decode > 0
    assert times.text_encoder + times.denoiser + times.vae_decode + times.other == pytest.approx(times.total)
    assert set(times.as_dict()) >= {"denoiser_step_0", "denoiser_step_2"}


def test_profile_ranges_name_denoiser_steps(flux_pipe, tmp_path):
    prof = lab.profile(flux_pipe, lab.Case(FLUX_PROMPT, steps=3, name="flux"), record_steps=2, out_dir=tmp_path)
    stages = list(prof.stages().index)
    assert stages == ["text_encoder", "denoiser_step_0", "denoiser_step_1", "vae_decode"]
    assert prof.denoiser_steps == 2 and not prof.ops(stage="denoiser", top=None).empty
    trace = json.loads(open(prof.trace_path).read())
    marks = [e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")]
    assert len(marks) == prof.denoiser_steps + 2  # prompt encoding, each step, VAE decode


def test_flux_dev_flops_per_step_agree_from_two_methods():
    pipe = build_embedded("flux-arch", empty=True)
    counted = step_flops(pipe, 1024, 1024, batch=step_batch(pipe, 3.5))["total"]
    analytic = analytic_step_flops(pipe, 1024, 1024, batch=1)["total"]
    assert step_batch(pipe, 3.5) == 1  # guidance-distilled: no unconditional batch
    assert counted == pytest.approx(analytic, rel=0.01)
    # 2 x 11.9e9 parameters x 4096 image tokens bounds it from above (text-stream weights see 512 tokens only)
    assert 5e13 < counted < 2 * 11_901_408_320 * (4096 + 512)


def test_sd3_flops_per_step_agree_from_two_methods():
    pipe = build_embedded("sd35m-arch", empty=True)
    assert step_batch(pipe, 7.0) == 2
    counted, analytic = step_flops(pipe, 256, 256, batch=2)["total"], analytic_step_flops(pipe, 256, 256)["total"]
    assert counted == pytest.approx(analytic, rel=0.01) and counted > 0


def test_counted_run_matches_the_meta_count_on_a_transformer(flux_pipe):
    case = lab.Case(FLUX_PROMPT, steps=2, name="flux")
    report = lab.flops_report(flux_pipe, case, stage_seconds={"text_encoder": 0.1, "denoiser": 1.0, "vae_decode": 0.1})
    assert report.stage("denoiser").flops == pytest.approx(2 * report.step_flops, rel=1e-6)
    assert report.step_flops == pytest.approx(report.step_flops_analytic, rel=0.01)


@pytest.mark.parametrize("name, reason", [
    ("attention-slicing", "only UNet/VAE attention"),
    ("xformers", "not installed|CUDA|only UNet/VAE"),
    ("compile-unet", "use compile-denoiser"),
    ("quanto-unet-int8w", "use quanto-denoiser-int8w"),
    ("bf16-unet", "use bf16-denoiser"),
    ("ddim", "DDPM-style.*flow-matching"),
    ("dpmpp-2m-karras", "use one of flow-euler"),
    ("flow-heun", "custom sigmas|its own sigmas"),
])
def test_recipes_that_cannot_fit_a_flux_model_say_why(name, reason):
    why = parse(name).fits(model_kind("tiny-flux")) or {name: recipes.get(name).check(lab.RecipeEnv.detect("cpu"))}
    assert why and any(__import__("re").search(reason, v or "") for v in why.values()), why


def test_flow_schedulers_do_not_fit_a_unet_model():
    assert "flow-matching scheduler" in parse("flow-euler").fits(model_kind("tiny"))["flow-euler"]
    assert parse("flow-heun").fits(model_kind("sd35m-arch")) == {}  # SD3 passes no sigmas: Heun fits
    assert parse("compile-denoiser-regional").fits(model_kind("sd35m-arch"))  # no _repeated_blocks
    assert "dual-attention" in parse("fused-qkv").fits(model_kind("sd35m-arch"))["fused-qkv"]
    assert parse("fused-qkv").fits(model_kind("tiny-flux")) == {}


def test_an_unfit_recipe_is_refused_before_anything_loads(monkeypatch):
    import lab.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(lab.LabError, match="cannot apply to 'tiny-flux'.*attention-slicing"):
        prepare_module.prepare("tiny-flux", "bf16+attention-slicing", device="cpu")
    skipped = prepare_module.prepare("tiny-flux", "ddim", device="cpu", strict=False)
    assert skipped.pipe is None and "flow-matching" in skipped.skipped
    with pytest.raises(lab.LabError, match="cannot drive 'tiny-flux'"):
        load_model("tiny-flux", scheduler="euler")


def test_transformer_recipes_change_what_they_say(flux_pipe):
    plain = lab.load_pipeline("tiny-flux", device="cpu")
    baseline = first_step_update(plain, lab.Case(FLUX_PROMPT, steps=2))
    fused = lab.load_pipeline("tiny-flux", device="cpu", recipe="fused-qkv")
    assert any(hasattr(m, "to_qkv") for m in fused.transformer.modules())
    quant = lab.load_pipeline("tiny-flux", device="cpu", recipe="quanto-denoiser-int8w")
    assert lab.weight_bytes(quant)["transformer"] * 3 < lab.weight_bytes(plain)["transformer"]
    bf16 = lab.load_pipeline("tiny-flux", device="cpu", recipe="bf16-denoiser")
    assert bf16.transformer.dtype == torch.bfloat16 and bf16.vae.dtype == torch.float32
    for pipe, tolerance in ((fused, 1e-4), (quant, 0.05), (bf16, 0.05)):
        fidelity = Fidelity.between(first_step_update(pipe, lab.Case(FLUX_PROMPT, steps=2)), baseline)
        assert fidelity.rel_error < tolerance and fidelity.cosine > 0.99
    assert _call(bf16).shape == (64, 64, 3)


def test_math_attention_sets_the_transformer_backend_and_nothing_else():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry.get_active_backend()[0]
    pipe = lab.load_pipeline("tiny-flux", device="cpu", recipe="math-attention")
    backends = {str(m.processor._attention_backend).lower() for m in pipe.transformer.modules()
                if hasattr(m, "processor") and hasattr(m.processor, "_attention_backend")}
    assert backends and all("math" in b for b in backends)
    assert _AttentionBackendRegistry.get_active_backend()[0] == default  # the next pipeline is not changed


def test_presets_and_plans_fit_a_transformer_model():
    env = lab.RecipeEnv.detect("cpu")
    expert = lab.preset("expert", env, model="tiny-flux")
    assert "dpmpp" not in expert and "compile-denoiser" in expert
    assert parse(expert).fits(model_kind("tiny-flux")) == {}
    parts, notes = fit_to_model(["fp16", "attention-slicing", "compile-denoiser"], model_kind("tiny-flux"))
    assert parts == ["bf16", "compile-denoiser"] and len(notes) == 2
    assert fitting(["fp32", "ddim", "flow-euler+steps-4"], "tiny-flux") == ["fp32", "flow-euler+steps-4"]
    assert fitting(["fp32", "ddim", "flow-euler+steps-4"], "tiny") == ["fp32", "ddim"]
    rec = lab.recommend(env, priority="speed", model="tiny-flux")
    assert parse(rec.recipe).fits(model_kind("tiny-flux")) == {} and any("left out" in r for r in rec.reasons)


def test_ladder_rungs_for_a_transformer():
    rungs = dict(lab.ladder.rungs("bf16", 8, "compile-denoiser-regional", transformer=True))
    assert not any("channels-last" in r for r in rungs.values())
    assert rungs["+ 4 steps"].endswith("+steps-4") and "dpmpp" not in rungs["+ 4 steps"]
    for recipe in rungs.values():
        assert parse(recipe).fits(model_kind("tiny-flux")) == {}, recipe


def test_diagnosis_drops_suggestions_the_model_cannot_take():
    from lab.diagnosis import _finding

    finding = _finding("attention-bound", "medium", "attention dominates")
    assert "xformers" in finding.suggest
    d = lab.diagnose(ssim=0.5, kind=model_kind("tiny-flux"))
    assert all(not parse(s).fits(model_kind("tiny-flux")) for f in d.findings for s in f.suggest)


def test_results_written_before_the_rename_still_load():
    old = {"text_encoder": 0.1, "unet": 1.0, "unet_per_step": 0.25, "vae_decode": 0.2, "other": 0.0,
           "steps": [0.25] * 4}
    summary = StageSummary.from_dict(old)
    assert summary.denoiser == 1.0 and summary.denoiser_per_step == 0.25
    assert canonical_stage("unet_step_3") == "denoiser_step_3" and canonical_stage("vae_decode") == "vae_decode"
    timings = lab.StageTimes.from_dict({"total": 1.0, "text_encoder": 0.1, "unet_steps": [0.2, 0.3],
                                        "vae_decode": 0.1, "other": 0.3})
    assert timings.denoiser == pytest.approx(0.5)


def test_lora_round_trip_on_a_transformer(tmp_path):
    pipe = lab.load_pipeline("tiny-flux", device="cpu")
    path = lab.lora.make_lora(pipe, tmp_path / "flux_lora.safetensors")
    before = _call(pipe)
    loaded = lab.lora.load_lora(pipe, path, scale=1.0)
    assert getattr(loaded.transformer, "peft_config", None)
    assert not np.array_equal(before, _call(loaded))


def test_a_run_directory_written_before_the_rename_still_loads_and_resumes(tmp_path):
    case = lab.Case("a red circle", steps=1, name="c")
    args = dict(repeats=1, warmup=0, out=tmp_path, progress=False, prime=False)
    lab.compare("tiny-random", ["fp32"], [case], **args)
    path = tmp_path / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:  # the row as lab wrote it before the denoiser rename and the model/worker fields
        stages = row["stages"]
        stages["unet"], stages["unet_per_step"] = stages.pop("denoiser"), stages.pop("denoiser_per_step")
        row.pop("model", None), row.pop("worker", None)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = lab.compare("tiny-random", ["fp32"], [case], **args)
    assert len(path.read_text().splitlines()) == len(rows)  # resumed: nothing measured twice
    assert again.record("fp32", "c").stages.denoiser == rows[0]["stages"]["unet"]
