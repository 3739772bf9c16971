"""The run-to-file pipeline: a training run's checkpoint -> a verified policy file on disk.

The one place that orders export's steps, each defined in its own module:

1. read the run (:func:`nmrl.train.run.load_trained_actor`) and trace the fp32/fp16 graph with its
   metadata (:mod:`nmrl.export.onnx_export`), enforcing the run's N:M claim;
2. optionally pad the first layer's K, and quantize to int8 (:mod:`nmrl.export.quantize`) on
   observations from :mod:`nmrl.export.observations`;
3. verify the file against the torch policy (:mod:`nmrl.export.parity`), both sides run by their
   deploy backends (:class:`~nmrl.deploy.torch_backend.TorchPolicy`,
   :class:`~nmrl.deploy.ort_backend.OrtPolicy` of the model in memory);
4. write it (atomically) as ONNX or as the nm-packed file (:mod:`nmrl.export.packed`), which is
   read back and compared before the export reports success, or as C (:mod:`nmrl.export.c_source`),
   which is compiled and verified as its own backend runs it (:mod:`nmrl.deploy.c_backend`) before
   it is written.

:func:`export_c_file` makes C of a policy file nmrl already wrote (the checkpoint is not read: the
reference is that file under ONNX Runtime, verified against torch when it was exported).

Imports point one way (pipeline -> the step modules -> verify, policy_file); no step module
imports this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from nmrl.deploy.c_backend import compiled_policy
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.deploy.policy import Policy
from nmrl.deploy.torch_backend import TorchPolicy
from nmrl.envs import describe_env
from nmrl.errors import NmrlError
from nmrl.export.c_source import CSource, generate_c, read_policy_file
from nmrl.export.observations import load_calibration, policy_observations
from nmrl.export.onnx_export import DType, build_policy_onnx, finish_graph, save_onnx
from nmrl.export.packed import PackedReport, load_packed, write_packed
from nmrl.export.parity import (
    CHECK_EPISODES,
    RETURN_MARGIN,
    Verification,
    check_closed_loop_settings,
    enforce,
    verify_export,
)
from nmrl.export.quantize import FirstLayer, Int8Target, QuantizationReport, pad_first_gemm_k, quantize_int8
from nmrl.export.verify import ModelCheck, inspect_model
from nmrl.policy_file import read_claims
from nmrl.sparsity.spec import nm_pattern
from nmrl.train.normalization import NormalizedPolicy
from nmrl.train.run import LoadedPolicy, load_trained_actor


def run_metadata(loaded: LoadedPolicy) -> dict[str, Any]:
    """The policy-file claims (:class:`~nmrl.policy_file.PolicyClaims` fields) describing a run's policy."""
    return {
        "env_id": loaded.env_id,
        "env_kwargs": loaded.config.env_kwargs,
        "action_low": [float(x) for x in loaded.action_low],
        "action_high": [float(x) for x in loaded.action_high],
        "algo": loaded.config.algo,
        "step": loaded.step,
        "checkpoint": loaded.checkpoint.name,
        "config": loaded.config.to_dict(),
        **(
            {"obs_normalization": obs_normalization_claim(loaded.policy)}
            if isinstance(loaded.policy, NormalizedPolicy)
            else {}
        ),
    }


def obs_normalization_claim(policy: NormalizedPolicy) -> dict[str, float]:
    """``nmrl.obs_normalization`` of a policy on raw observations (its constants are in the graph)."""
    return {"clip": policy.normalization.clip, "count": policy.normalization.count}


@dataclass
class RunExport:
    """What :func:`export_run` wrote and checked."""

    path: Path
    check: ModelCheck
    verification: Verification
    """On-policy parity, wide random inputs, closed loop."""
    packed: PackedReport | None = None
    """For --format nm-packed."""
    warnings: list[str] = field(default_factory=list)
    quantization: QuantizationReport | None = None
    """For --dtype int8."""
    c_source: CSource | None = None
    """For --format c: the generated files (``path`` is the .c, its .h beside it)."""


Format = Literal["onnx", "nm-packed", "c"]
C_PREFIX = "nmrl_policy"
"""The generated C's entry points: ``nmrl_policy_act``, ``nmrl_policy_act_batch``."""


def default_output(run_dir: Path, dtype: DType, fmt: str) -> Path:
    stem = "actor" if dtype == "fp32" else f"actor.{dtype}"
    suffix = {"onnx": ".onnx", "nm-packed": ".nm.npz", "c": ".c"}[fmt]
    return Path(run_dir) / f"{stem}{suffix}"


def c_output_for(policy_file: Path) -> Path:
    """Where the C of a policy file goes: beside it (``actor.onnx``, ``actor.nm.npz`` -> ``actor.c``)."""
    policy_file = Path(policy_file)
    return policy_file.with_name(policy_file.name.removesuffix(".nm.npz").removesuffix(".onnx") + ".c")


def _c_candidate(model: onnx.ModelProto, prefix: str, env_id: str | None) -> tuple[CSource, Policy]:
    """The C of ``model`` and its compiled policy (host build, the SIMD path this CPU has)."""
    source = generate_c(model, prefix, source_bytes=model.SerializeToString())
    return source, compiled_policy(source, env_id=env_id)


def export_run(
    run_dir: Path,
    dtype: DType = "fp32",
    io_dtype: DType | None = None,
    which: str = "last",
    output: Path | None = None,
    fmt: Format = "onnx",
    parity_samples: int = 256,
    episodes: int | None = None,
    return_margin: float | None = None,
    allow_worse_return: bool = False,
    pad_k: bool = False,
    calibration: Path | None = None,
    int8_target: Int8Target = "ort",
    int8_first_layer: FirstLayer = "measure",
    c_prefix: str = C_PREFIX,
) -> RunExport:
    """Export a run's policy: verify the claimed N:M pattern, verify that the file acts as the torch
    policy (:func:`nmrl.export.parity.verify_export`: on-policy parity, wide random inputs reported,
    closed-loop returns on the same seeds), then write ``actor[.fp16|.int8].onnx`` (or the nm-packed
    file). ``dtype="int8"`` quantizes the fp32 graph (:mod:`nmrl.export.quantize`), calibrated on the
    policy's own observations or on ``calibration`` (.npy), with the recipe of ``int8_target``
    (``ort``: fast in ONNX Runtime on a CPU; ``tensorrt``: the settings TensorRT builds) and the
    first layer's precision ``int8_first_layer`` (:func:`nmrl.export.quantize.quantize_int8`); ``pad_k``
    pads the first layer's K to a multiple of 4 inside the graph. ``fmt="c"`` writes ``actor.c`` and
    ``actor.h`` (entry points ``<c_prefix>_act``), verified as compiled here (fp32, or int8 from the
    quantized graph: :mod:`nmrl.export.c_source`).

    Nothing is written when verification fails (:class:`NmrlError`).
    """
    episodes = CHECK_EPISODES if episodes is None else episodes
    return_margin = RETURN_MARGIN if return_margin is None else return_margin
    check_closed_loop_settings(episodes, return_margin)  # before any work: a refused export costs nothing
    if fmt == "c" and (dtype == "fp16" or io_dtype not in (None, "fp32")):
        raise NmrlError("--format c writes fp32 and int8 C (fp16 C is not generated): use --dtype fp32 or int8")
    loaded = load_trained_actor(Path(run_dir), which)
    # a bad calibration file is refused before the export is built
    calibrated = load_calibration(calibration, loaded.obs_dim) if dtype == "int8" and calibration else None
    claimed = nm_pattern(loaded.config.spec)
    if fmt == "nm-packed" and claimed is None:
        raise NmrlError(f"--format nm-packed needs an N:M run; this run's sparsity is {loaded.config.sparsity!r}")
    traced = "fp32" if dtype == "int8" else dtype
    model, check = build_policy_onnx(
        loaded.policy, loaded.obs_dim, loaded.act_dim, claimed, run_metadata(loaded), traced, io_dtype
    )
    env_kwargs = loaded.config.env_kwargs
    reference = TorchPolicy(loaded.policy, loaded.obs_dim, loaded.act_dim, threads=None, env_id=loaded.env_id)
    extra: dict[str, Any] = {}
    if pad_k:
        extra["pad_k"] = pad_first_gemm_k(model)
    quantization = None
    if dtype == "int8":
        if calibrated is not None:
            observations, source = calibrated, str(calibration)
        else:
            observations = policy_observations(reference, loaded.env_id, env_kwargs=env_kwargs)
            source = f"the policy's own {describe_env(loaded.env_id, env_kwargs)} episodes + random-action states"
        model, quantization = quantize_int8(model, observations, source, int8_target, int8_first_layer)
        extra |= {"dtype": "int8", "io_dtype": "fp32", "quantization": quantization.to_metadata()}
    if extra:
        check = finish_graph(model, claimed, extra)
    c_source = None
    if fmt == "c":
        c_source, candidate = _c_candidate(model, c_prefix, loaded.env_id)
    else:
        candidate = OrtPolicy(model.SerializeToString())
    with candidate:
        verification = verify_export(
            reference,
            candidate,
            dtype,
            loaded.env_id,
            loaded.action_low,
            loaded.action_high,
            episodes=episodes,
            margin=return_margin,
            random_count=parity_samples,
            env_kwargs=env_kwargs,
        )
    warnings = enforce(verification, allow_worse_return)
    path = Path(output) if output is not None else default_output(run_dir, dtype, fmt)
    packed = None
    if fmt == "onnx":
        save_onnx(model, path)
    elif c_source is not None:
        c_source.write(path)
    else:
        assert claimed is not None  # an nm-packed export without a claimed pattern was refused above
        packed = write_packed(model, path, claimed)
        # The file is only useful if it gives the model back exactly: check before reporting.
        rebuilt = {init.name: init for init in load_packed(path).graph.initializer}
        for init in model.graph.initializer:
            back = rebuilt.get(init.name)
            if (
                back is None
                or back.data_type != init.data_type
                or not np.array_equal(numpy_helper.to_array(back), numpy_helper.to_array(init))
            ):
                path.unlink(missing_ok=True)
                raise NmrlError(f"nm-packed round trip changed {init.name}; nothing written")
    check.path = path
    return RunExport(path, check, verification, packed, warnings, quantization, c_source)


def export_c_file(
    policy_file: Path,
    output: Path | None = None,
    c_prefix: str = C_PREFIX,
    episodes: int | None = None,
    return_margin: float | None = None,
    allow_worse_return: bool = False,
    parity_samples: int = 256,
) -> RunExport:
    """C of a policy file nmrl wrote (fp32 or int8 ``.onnx``, or ``.nm.npz``), verified before it is
    written: the compiled C against the file under ONNX Runtime (the file was verified against torch
    when nmrl exported it), with the same on-policy parity (the file's precision's tolerance: ONNX
    Runtime fuses an int8 file's Q/DQ into integer GEMMs that round some activations one level
    apart from the graph's own ops, which the C computes) and closed loop as every export.
    Writes ``<stem>.c`` and ``<stem>.h`` beside the file (or at ``output``)."""
    from nmrl.envs import env_id_from_file

    episodes = CHECK_EPISODES if episodes is None else episodes
    return_margin = RETURN_MARGIN if return_margin is None else return_margin
    check_closed_loop_settings(episodes, return_margin)
    policy_file = Path(policy_file)
    model, payload = read_policy_file(policy_file)
    check = inspect_model(model)
    claims = read_claims(check.metadata, str(policy_file))
    env_id = env_id_from_file(claims.env_id, policy_file) if claims.env_id else None
    source = generate_c(model, c_prefix, source_bytes=payload)
    reference = OrtPolicy(model.SerializeToString())
    with reference, compiled_policy(source, env_id=env_id) as candidate:
        verification = verify_export(
            reference,
            candidate,
            "int8" if claims.dtype == "int8" else "fp32",
            env_id,
            claims.action_low,
            claims.action_high,
            episodes=episodes,
            margin=return_margin,
            random_count=parity_samples,
            env_kwargs=claims.env_kwargs,
        )
    warnings = enforce(verification, allow_worse_return)
    path = Path(output) if output is not None else c_output_for(policy_file)
    source.write(path)
    check.path = path
    return RunExport(path, check, verification, warnings=warnings, c_source=source)
