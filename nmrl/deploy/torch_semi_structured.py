"""The ``torch-2:4`` deploy backend: a run's actor in fp16/bf16 on the GPU, its 2:4 layers compressed.

The PyTorch counterpart of a sparse TensorRT engine, for ``nmrl bench``: the same checkpoint as
the ``torch`` backend, converted by :func:`nmrl.sparsity.semi_structured.to_semi_structured`
(layers whose shapes the kernels take run on sparse tensor cores; the others are plain dense
layers in the same dtype). ``compress=False`` gives the dense-kernel variant for comparison (the
same weights, not compressed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError


def torch_semi_structured_unavailable_reason() -> str | None:
    """Backend probe: None when PyTorch's 2:4 semi-structured matmul works on this machine."""
    from nmrl.sparsity.semi_structured import probe_semi_structured

    support = probe_semi_structured()
    return None if support.available else support.reason


class SemiStructuredTorchPolicy(Policy):
    """A converted actor behind the deploy ``Policy`` interface (float32 numpy in and out)."""

    backend = "torch-2:4"

    def __init__(
        self,
        module,
        obs_dim: int,
        act_dim: int,
        dtype: str = "float16",
        compress: bool = True,
        env_id: str | None = None,
    ) -> None:
        from nmrl.sparsity.semi_structured import FAST_DTYPES, format_choices, to_semi_structured

        if dtype not in FAST_DTYPES:
            raise NmrlError(f"torch-2:4 runs in {' or '.join(FAST_DTYPES)}, not {dtype!r}")
        self.dtype = FAST_DTYPES[dtype]
        self.choices = to_semi_structured(module, self.dtype, compress=compress)
        self.module = module.eval()
        self.obs_dim, self.act_dim, self.env_id, self.compress = obs_dim, act_dim, env_id, compress
        self.layer_report = format_choices(self.choices)

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(obs).to("cuda", self.dtype)
            # .float().cpu() waits for the GPU, so timings of act() are synchronised.
            return self.module(inputs).float().cpu().numpy()

    def describe(self) -> str:
        import torch

        sparse = sum(choice.sparse for choice in self.choices)
        what = f"{sparse}/{len(self.choices)} layers 2:4" if self.compress else "dense kernels"
        return (
            f"PyTorch {torch.__version__.split('+')[0]} {str(self.dtype).removeprefix('torch.')}, "
            f"CUDA ({torch.cuda.get_device_name()}), {what}"
        )

    def close(self) -> None:
        self.module = None


def load_torch_semi_structured_policy(
    path: Path, which: str = "last", dtype: str = "float16", dense: bool = False, **_: object
) -> SemiStructuredTorchPolicy:
    """Backend loader: a run directory's ``last``/``best`` checkpoint, converted for 2:4 inference
    (``dense=True``: the same in plain dense layers)."""
    reason = torch_semi_structured_unavailable_reason()
    if reason is not None:
        raise NmrlError(f"torch-2:4 needs a GPU with 2:4 sparse tensor cores: {reason}")
    if Path(path).suffix == ".onnx":
        raise NmrlError(f"{path}: the torch-2:4 backend loads a run directory's checkpoint, not an ONNX file")
    from nmrl.train.run import load_trained_actor

    loaded = load_trained_actor(Path(path), which)
    policy = SemiStructuredTorchPolicy(loaded.policy, loaded.obs_dim, loaded.act_dim, dtype, not dense, loaded.env_id)
    policy.env_kwargs = loaded.config.env_kwargs
    return policy
