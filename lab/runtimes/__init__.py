"""The denoiser run by another CPU runtime (OpenVINO, ONNX Runtime) behind a small ``nn.Module`` the pipeline calls.

``wrapper.RuntimeDenoiser`` stands in for ``pipe.unet``: on its first call with a new input shape it exports the
torch UNet through a backend (``backends.OpenVINOBackend``, ``backends.OnnxRuntimeBackend``), then runs every call
there; the recipes in ``lab.recipes.runtimes`` install it.
"""

from .backends import BACKENDS, Backend, OnnxRuntimeBackend, OpenVINOBackend
from .wrapper import RuntimeDenoiser, install

__all__ = ["BACKENDS", "Backend", "OnnxRuntimeBackend", "OpenVINOBackend", "RuntimeDenoiser", "install"]
