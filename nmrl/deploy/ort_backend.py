"""ONNX Runtime policies: CPU (the embedded default) and CUDA. Imports no PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError
from nmrl.policy_file import read_claims

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtPolicy(Policy):
    """An ONNX policy file run by an ONNX Runtime session.

    Args:
        model: path to the .onnx file, or its serialized bytes.
        providers: execution providers in priority order.
        threads: intra-op threads (1 = one core, the usual embedded setting; 0 = ORT's default).
    """

    def __init__(
        self, model: Path | bytes, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 1
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused providers are noise
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=list(providers))
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise NmrlError(
                f"ONNX Runtime cannot load {model if isinstance(model, Path) else 'model'}: "
                f"{str(error).splitlines()[0][:200]}"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 2:
            raise NmrlError("not a policy graph: expected one input [batch, obs_dim] and an action output")
        obs_dim, act_dim = inputs[0].shape[1], outputs[0].shape[-1]
        if not isinstance(obs_dim, int) or not isinstance(act_dim, int):
            raise NmrlError(f"not a policy graph: obs/action sizes must be fixed, got {obs_dim}, {act_dim}")
        if inputs[0].type not in _NUMPY_TYPES:
            raise NmrlError(f"unsupported input type {inputs[0].type}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_type = _NUMPY_TYPES[inputs[0].type]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.claims = read_claims(self.metadata, str(model) if isinstance(model, Path) else "model")
        self.env_id = self.claims.env_id
        self.env_kwargs = self.claims.env_kwargs
        self.threads = threads
        self.provider = self.session.get_providers()[0]
        self.backend = "ort-cuda" if self.provider == "CUDAExecutionProvider" else "ort"

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        # session.run returns host arrays: for CUDA the copy back synchronises the device.
        return self.session.run([self.output_name], {self.input_name: obs.astype(self.input_type, copy=False)})[0]

    @property
    def sparsity(self) -> str | None:
        return self.claims.sparsity

    @property
    def action_bounds(self) -> tuple[list[float], list[float]] | None:
        return self.claims.action_bounds

    def describe(self) -> str:
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return f"ONNX Runtime {self.provider.removesuffix('ExecutionProvider')}{threads}"


def _check_onnx_path(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / "actor.onnx"
        if not candidate.is_file():
            raise NmrlError(f"{path}: no actor.onnx in this directory (run `nmrl export {path}` first)")
        return candidate
    if not path.is_file():
        raise NmrlError(f"{path}: no such file")
    with path.open("rb") as file:
        head = file.read(4)
    if not head:
        raise NmrlError(f"{path}: the file is empty (0 bytes), not an ONNX model")
    if head.startswith(b"PK"):  # a zip archive: numpy's .npz, as nmrl's nm-packed format
        raise NmrlError(
            f"{path}: an .npz archive (nmrl's nm-packed format?), not an ONNX model; run the .onnx export "
            "(nmrl export RUN), or rebuild the graph with nmrl.export.packed.load_packed"
        )
    return path


def load_ort_policy(path: Path, threads: int = 1) -> OrtPolicy:
    """ONNX Runtime on the CPU. ``path``: an .onnx file, or a run directory holding actor.onnx."""
    return OrtPolicy(_check_onnx_path(path), ("CPUExecutionProvider",), threads)


def ort_cuda_unavailable_reason() -> str | None:
    """Backend probe for ``ort-cuda``: why this ONNX Runtime has no CUDA provider (None when it has)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            "this ONNX Runtime build has no CUDAExecutionProvider (install onnxruntime-gpu on a "
            f"machine with an NVIDIA GPU; providers here: {', '.join(ort.get_available_providers())})"
        )
    return None


def load_ort_cuda_policy(path: Path, threads: int = 1) -> OrtPolicy:
    """ONNX Runtime with the CUDA provider; refuses to fall back to the CPU silently."""
    policy = OrtPolicy(_check_onnx_path(path), ("CUDAExecutionProvider", "CPUExecutionProvider"), threads)
    if policy.provider != "CUDAExecutionProvider":
        raise NmrlError("ONNX Runtime could not start its CUDA provider (no usable GPU or CUDA libraries)")
    return policy
