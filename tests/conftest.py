import os

# Set before anything imports huggingface_hub, which reads these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# Runs measure in-process unless a test is about isolation (tests/test_executors.py passes isolate=True):
# a worker per recipe costs seconds of imports, which the whole suite cannot afford on a 2-core machine.
os.environ.setdefault("LAB_ISOLATE", "0")

import socket  # noqa: E402

import pytest  # noqa: E402

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and self.family != socket.AF_UNIX:
        raise AssertionError(f"a test tried to reach the network: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the hub (or anything off this machine)."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture(scope="session")
def tiny_pipe():
    import lab

    return lab.load_pipeline("tiny", device="cpu")


def generate(pipe, prompt="a red circle on the left", steps=2, seed=0, **kwargs):
    import numpy as np
    import torch

    out = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return np.asarray(out.images[0])
