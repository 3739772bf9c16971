"""Shared helpers for the export/inspect/deploy/bench tests: small real policies and one tiny run.

Tests that use :func:`tiny_run` mark themselves ``xdist_group("nmrl_tiny_run")`` so that, under
``pytest -n``, the run is trained once on one worker (about 6 s on 2 cores) and reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TINY_RUN_GROUP = "nmrl_tiny_run"
HOPPER_OBS, HOPPER_ACT = 11, 3


def small_actor(
    pattern: str = "2:4",
    hidden: tuple[int, ...] = (32, 32),
    obs_dim: int = HOPPER_OBS,
    act_dim: int = HOPPER_ACT,
    seed: int = 0,
):
    """A TD3 actor with N:M layers (random init, magnitude masks); bounds [-1, 2] to test scaling."""
    import torch

    from nmrl.sparsity import sparsify
    from nmrl.sparsity.pattern import NMPattern
    from nmrl.train.networks import Actor

    torch.manual_seed(seed)
    actor = Actor(obs_dim, act_dim, [-1.0] * act_dim, [2.0] * act_dim, hidden=hidden)
    sparsify(actor, NMPattern.parse(pattern))
    return actor.eval()


def file_and_torch(policy, model: onnx.ModelProto | Path, obs_dim: int = HOPPER_OBS, act_dim: int = HOPPER_ACT):
    """The two sides export's parity compares, as their deploy backends run them: the torch fp32
    ``policy`` and the ONNX ``model`` (in memory or a file) under ONNX Runtime CPU."""
    from nmrl.deploy.ort_backend import OrtPolicy
    from nmrl.deploy.torch_backend import TorchPolicy

    candidate = OrtPolicy(model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model))
    return TorchPolicy(policy, obs_dim, act_dim, threads=None), candidate


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 600-step RNM-TD3 2:4 run on Hopper-v5 (64-64 networks), trained once per worker."""
    from helpers import tiny_config

    from nmrl.train.loop import train

    base = tmp_path_factory.getbasetemp() / "nmrl_tiny_run"
    run_dir = base / "runs" / "tiny"
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        config = tiny_config(
            base,
            env="Hopper-v5",
            seed=3,
            total_steps=600,
            learning_starts=256,
            batch_size=64,
            hidden=(64, 64),
            eval_every=600,
            eval_episodes=1,
            checkpoint_every=600,
            # The export tests compare this policy's one-episode return across precisions; it falls
            # within ~20 steps, so a different set of weights can move that return by a step's
            # reward. The policy these tests were written against is the SR-STE one (the default
            # before issue 23); the gradient is not what they test.
            gradient="ste",
        )
        train(config)
    return run_dir


def gemm_model(
    weight: np.ndarray, trans_b: int, metadata: dict[str, str] | None = None, as_constant_node: bool = False
) -> onnx.ModelProto:
    """y = Gemm(x, W, transB) with W an initializer (or a Constant node)."""
    k = weight.shape[1] if trans_b else weight.shape[0]
    n = weight.shape[0] if trans_b else weight.shape[1]
    elem = helper.np_dtype_to_tensor_dtype(weight.dtype)
    nodes = []
    initializers = []
    if as_constant_node:
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W_value")))
    else:
        initializers.append(numpy_helper.from_array(weight, "W"))
    nodes.append(helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=trans_b))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, ["batch", k])],
        [helper.make_tensor_value_info("y", elem, ["batch", n])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def matmul_model(weight: np.ndarray, transpose_perm: list[int] | None = None) -> onnx.ModelProto:
    """y = MatMul(x, B) with B [K, N] an initializer, optionally stored transposed behind a Transpose."""
    nodes = []
    if transpose_perm is not None:
        stored = np.ascontiguousarray(np.transpose(weight, transpose_perm))
        nodes.append(helper.make_node("Transpose", ["W_stored"], ["W"], perm=transpose_perm))
        initializers = [numpy_helper.from_array(stored, "W_stored")]
    else:
        initializers = [numpy_helper.from_array(weight, "W")]
    nodes.append(helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def nm_along(shape: tuple[int, int], axis: int, n: int, m: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    """A random weight with exactly min(n, group length) nonzeros in each group of m along ``axis``."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape).astype(dtype) + np.asarray(3.0, dtype)  # no accidental zeros
    moved = np.moveaxis(weight, axis, -1).copy()
    k = moved.shape[-1]
    for row in range(moved.shape[0]):
        for start in range(0, k, m):
            group = np.arange(start, min(start + m, k))
            moved[row, rng.permutation(group)[n:]] = 0
    return np.ascontiguousarray(np.moveaxis(moved, -1, axis))


def exported_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_run` with its verified ``actor.onnx`` (exported once per worker)."""
    from nmrl.export.pipeline import export_run

    run_dir = tiny_run(tmp_path_factory)
    if not (run_dir / "actor.onnx").is_file():
        export_run(run_dir, parity_samples=32)
    return run_dir


def load_run_backed_policy(path: Path, dense: bool = False, threads: int = 1):
    """A stand-in for backends that load a run directory themselves (like torch-2:4): the run's
    actor.onnx under ONNX Runtime, or the dense twin of it when ``dense``."""
    from nmrl.deploy.ort_backend import OrtPolicy
    from nmrl.export.twin import dense_twin_onnx
    from nmrl.export.verify import load_onnx

    model = load_onnx(Path(path) / "actor.onnx")
    policy = OrtPolicy((dense_twin_onnx(model) if dense else model).SerializeToString(), threads=threads)
    policy.backend = "run-backed"
    return policy


def aarch64_missing() -> bool:
    """Whether the aarch64 cross compiler or qemu-aarch64 is missing (.ci/run installs both)."""
    import shutil

    return shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None


needs_aarch64 = pytest.mark.skipif(
    aarch64_missing(), reason="needs Debian's gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them)"
)


def c_test_policy(pattern: str, hidden: tuple[int, ...], seed: int) -> onnx.ModelProto:
    """The policy file the C tests generate from: a Hopper-sized actor (bounds [-1, 2]), masked
    ``pattern`` by magnitude (or ``dense``, with no N:M claim), exported by nmrl's exporter."""
    from nmrl.export.onnx_export import build_policy_onnx
    from nmrl.sparsity.pattern import NMPattern
    from nmrl.train.networks import Actor

    if pattern == "dense":
        claimed, actor = None, Actor(11, 3, [-1.0] * 3, [2.0] * 3, hidden=hidden).eval()
    else:
        claimed, actor = NMPattern.parse(pattern), small_actor(pattern, hidden, seed=seed)
    bounds = {"action_low": [-1.0] * 3, "action_high": [2.0] * 3}
    model, _ = build_policy_onnx(actor, 11, 3, claimed, {"env_id": "Hopper-v5", **bounds})
    return model


def aarch64_actions(source, folder: Path, flags: tuple[str, ...], obs: np.ndarray) -> np.ndarray:
    """The actions of generated C (a :class:`nmrl.export.c_source.CSource`) on ``obs``, cross-compiled
    with ``aarch64-linux-gnu-gcc`` and ``flags`` around its replay harness, run under ``qemu-aarch64``."""
    import subprocess

    from nmrl.deploy.c_backend import compile_c
    from nmrl.export.c_source import replay_harness

    c_path, _ = source.write(folder / "actor.c")
    (folder / "replay.c").write_text(replay_harness(source))
    program = compile_c(
        [c_path, folder / "replay.c"], folder / "replay", (*flags, "-static"), cc="aarch64-linux-gnu-gcc", shared=False
    )
    (folder / "obs.bin").write_bytes(np.ascontiguousarray(obs, np.float32).tobytes())
    subprocess.run(["qemu-aarch64", str(program), str(folder / "obs.bin"), str(folder / "act.bin")], check=True)
    return np.frombuffer((folder / "act.bin").read_bytes(), np.float32).reshape(len(obs), -1)
