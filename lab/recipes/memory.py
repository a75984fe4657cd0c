"""Memory and caching recipes: CPU offload, diffusers group offloading (block, leaf with CUDA streams, to
disk), VAE slicing and tiling, cached prompt embeddings."""

from __future__ import annotations

from .base import Recipe

OFFLOAD_REASON = "on a CPU-only machine the whole model already lives in CPU memory: nothing to offload"


def _call(method: str, component: str | None = None):
    def apply(pipe, cases):
        target = getattr(pipe, component) if component else pipe
        getattr(target, method)()

    return apply


def _cache_prompt_embeds(pipe, cases):
    """Wrap ``encode_prompt`` on the instance with a cache keyed by its arguments (not tensors)."""
    import torch

    original = pipe.encode_prompt
    cache: dict = {}

    def key_of(value):
        if isinstance(value, torch.Tensor):
            raise TypeError  # precomputed embeddings: nothing to cache
        return repr(value)

    def encode_prompt(*args, **kwargs):
        try:
            key = tuple(key_of(a) for a in args) + tuple((k, key_of(v)) for k, v in sorted(kwargs.items()))
        except TypeError:
            return original(*args, **kwargs)
        if key not in cache:
            cache[key] = original(*args, **kwargs)
            pipe.lab_prompt_cache_misses = getattr(pipe, "lab_prompt_cache_misses", 0) + 1
        else:
            pipe.lab_prompt_cache_hits = getattr(pipe, "lab_prompt_cache_hits", 0) + 1
        return cache[key]

    pipe.encode_prompt = encode_prompt


# recipe -> enable_group_offload arguments (diffusers 0.42.1, DiffusionPipeline.enable_group_offload)
GROUP_OFFLOAD = {
    "group-offload-block": ("groups of one block moved to the GPU as they run",
                            {"offload_type": "block_level", "num_blocks_per_group": 1}),
    "group-offload-leaf-stream": ("each leaf layer moved to the GPU on a CUDA stream, overlapped with the layer "
                                  "before it", {"offload_type": "leaf_level", "use_stream": True}),
    "group-offload-disk": ("blocks kept as safetensors on disk, read to the GPU as they run",
                           {"offload_type": "block_level", "num_blocks_per_group": 1, "disk": True}),
}


def _group_offload(options: dict):
    def apply(pipe, cases):
        import tempfile

        import torch

        from ..denoiser import denoiser

        kwargs = {k: v for k, v in options.items() if k != "disk"}
        if options.get("disk"):
            pipe.lab_offload_dir = tempfile.TemporaryDirectory(prefix="lab-group-offload-")  # removed with pipe
            kwargs["offload_to_disk_path"] = pipe.lab_offload_dir.name
        device = denoiser(pipe).device
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), **kwargs)

    return apply


def recipes() -> list[Recipe]:
    def cuda_only(env):
        return None if env.cuda else OFFLOAD_REASON

    return [
        Recipe("cache-prompt-embeds", "reuse text-encoder outputs for prompts seen before", "caching",
               slots=("caching",), apply_fn=_cache_prompt_embeds),
        Recipe("model-cpu-offload", "keep components in CPU memory, move each to the GPU while it runs", "memory",
               "CUDA, accelerate", slots=("offload",), apply_fn=_call("enable_model_cpu_offload"), check_fn=cuda_only),
        Recipe("sequential-cpu-offload", "stream weights to the GPU layer by layer (least memory, slowest)",
               "memory", "CUDA, accelerate", slots=("offload",), apply_fn=_call("enable_sequential_cpu_offload"),
               check_fn=cuda_only),
        *(Recipe(name, f"diffusers group offloading, every component: {what}", "memory", "CUDA",
                 slots=("offload",), apply_fn=_group_offload(options), check_fn=cuda_only)
          for name, (what, options) in GROUP_OFFLOAD.items()),
        Recipe("vae-slicing", "decode a batch one image at a time (helps only for batches > 1)", "memory",
               slots=("vae-slicing",), apply_fn=_call("enable_slicing", "vae")),
        Recipe("vae-tiling", "decode in overlapping tiles (helps only above the VAE's tile size)", "memory",
               slots=("vae-tiling",), apply_fn=_call("enable_tiling", "vae")),
    ]


INCOMPATIBLE: dict[frozenset[str], str] = {}
