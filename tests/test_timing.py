import statistics
import time

import pytest

import lab
from lab.timing import StageTimer


def _measure(pipe, steps=8, **kwargs):
    import torch

    with StageTimer(pipe) as timer:
        _, times = timer.measure(
            pipe, prompt="a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs
        )
    return times


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_stages_add_up_to_the_measured_total(model):
    pipe = lab.load_pipeline(model, device="cpu")
    _measure(pipe)  # warm-up
    runs = [_measure(pipe) for _ in range(3)]
    for t in runs:
        assert t.text_encoder > 0 and t.vae_decode > 0 and all(s > 0 for s in t.denoiser_steps)
        assert len(t.denoiser_steps) == pipe.num_timesteps
        named = t.text_encoder + t.denoiser + t.vae_decode
        assert named <= t.total  # stages never overlap
        assert sum(t.as_dict().values()) == pytest.approx(t.total, rel=1e-9)
    # what the hooks attribute covers the call: the unattributed rest is under 5% of the total
    assert statistics.median(t.other / t.total for t in runs) < 0.05


def test_timer_puts_known_sleeps_in_their_stages(tiny_pipe):
    # lower bounds only: a busy host can make any stage slower, never shorter than its sleep
    sleeps = {"text_encoder": 0.03, "unet": 0.05, "vae": 0.07}
    handles = [getattr(tiny_pipe, name).register_forward_pre_hook(lambda *a, s=s: time.sleep(s))
               for name, s in sleeps.items() if name != "vae"]
    handles.append(tiny_pipe.vae.post_quant_conv.register_forward_pre_hook(lambda *a: time.sleep(sleeps["vae"])))
    try:
        times = _measure(tiny_pipe, steps=3)
    finally:
        for handle in handles:
            handle.remove()
    assert all(s >= sleeps["unet"] for s in times.denoiser_steps)
    assert times.text_encoder >= 2 * sleeps["text_encoder"]  # prompt and the empty prompt of CFG
    assert times.vae_decode >= sleeps["vae"]


def test_user_callback_still_runs_and_hooks_are_removed(tiny_pipe):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(step)
        return kwargs

    import torch

    with StageTimer(tiny_pipe) as timer:
        timer.measure(tiny_pipe, prompt="x", num_inference_steps=3, callback_on_step_end=callback,
                      generator=torch.Generator().manual_seed(0))
    assert seen == list(range(tiny_pipe.num_timesteps))
    assert "decode" not in vars(tiny_pipe.vae)  # the instance wrapper is gone
    assert not tiny_pipe.unet._forward_pre_hooks and not tiny_pipe.text_encoder._forward_hooks


def test_ranges_appear_in_a_profiler_trace(tiny_pipe):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with StageTimer(tiny_pipe, ranges=True) as timer:
            timer.measure(tiny_pipe, prompt="x", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    names = {e.name for e in prof.events()}
    assert {"lab:text_encoder", "lab:denoiser_step_0", "lab:denoiser_step_1", "lab:vae_decode"} <= names
