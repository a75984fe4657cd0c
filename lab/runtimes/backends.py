"""Backends that turn a traced torch module into a callable on numpy arrays: OpenVINO and ONNX Runtime."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Run = Callable[[Sequence], "object"]  # numpy inputs -> the first output as a numpy array
Release = Callable[[], None]  # drops the caller's torch weights once the runtime no longer reads them


@dataclass(frozen=True)
class Backend:
    """A runtime the denoiser can be exported to; ``build(module, example, release)`` returns a callable on numpy
    arrays and calls ``release`` as soon as the torch module is no longer needed (so two copies of a multi-GB
    UNet are not held at once)."""

    name: str

    def build(self, module, example: tuple, release: Release) -> Run:
        raise NotImplementedError


@dataclass(frozen=True)
class OpenVINOBackend(Backend):
    """``openvino.convert_model`` of the module, compiled for the CPU; ``precision`` None keeps OpenVINO's default
    inference precision (bf16 on a CPU with AMX / AVX-512 BF16), ``"f32"`` forces fp32 arithmetic."""

    name: str = "openvino"
    precision: str | None = None

    def build(self, module, example: tuple, release: Release) -> Run:
        import warnings

        import openvino as ov

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python branches on shapes
            converted = ov.convert_model(module, example_input=example)
        # static shapes: the CPU plugin picks its kernels once for the shape the pipeline calls with
        converted.reshape({port.any_name: tuple(x.shape) for port, x in zip(converted.inputs, example)})
        config = {"INFERENCE_PRECISION_HINT": self.precision} if self.precision else {}
        compiled = ov.Core().compile_model(converted, "CPU", config)
        del converted, module  # the converted model shares the torch weights; the compiled one has its own
        release()
        request = compiled.create_infer_request()

        def run(inputs: Sequence):
            request.infer(list(inputs))
            return request.get_output_tensor(0).data.copy()

        return run


@dataclass(frozen=True)
class OnnxRuntimeBackend(Backend):
    """``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``: the dynamo one needs minutes and GBs
    more for a UNet) into a temporary folder (weights as external data past 2 GB), run by ``onnxruntime``."""

    name: str = "onnxruntime"
    opset: int = 17

    def build(self, module, example: tuple, release: Release) -> Run:
        import warnings

        import onnxruntime as ort
        import torch

        folder = tempfile.mkdtemp(prefix="lab-onnx-")
        path = os.path.join(folder, "denoiser.onnx")
        names = [f"input_{i}" for i in range(len(example))]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(module, example, path, input_names=names, output_names=["out"],
                              opset_version=self.opset, dynamo=False)
        del module
        release()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning idle threads take cores from torch's threads between the UNet calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        weakref.finalize(session, shutil.rmtree, folder, True)  # the export lives as long as the session

        def run(inputs: Sequence):
            return session.run(None, dict(zip(names, inputs)))[0]

        return run


BACKENDS: dict[str, Backend] = {
    "openvino": OpenVINOBackend(),
    "openvino-f32": OpenVINOBackend(name="openvino-f32", precision="f32"),
    "onnxruntime": OnnxRuntimeBackend(),
}
