"""The ``nmrl export`` and ``nmrl inspect`` verbs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import tyro

from nmrl.errors import NmrlError


def export(
    run_dir: Annotated[Path, tyro.conf.Positional],
    dtype: Literal["fp32", "fp16", "int8"] = "fp32",
    io_dtype: Literal["same", "fp32", "fp16"] = "same",
    format: Literal["onnx", "nm-packed", "c"] = "onnx",
    checkpoint: Literal["last", "best"] = "last",
    output: Path | None = None,
    env: str = "",
    check_episodes: int = 3,
    return_margin: float = 0.05,
    allow_worse_return: bool = False,
    pad_k: bool = False,
    calibration: Path | None = None,
    int8_target: Literal["ort", "tensorrt"] = "ort",
    int8_first_layer: Literal["measure", "fp32", "int8"] = "measure",
    c_prefix: str = "nmrl_policy",
) -> None:
    """Export a run's actor to ONNX (runs/<run>/actor.onnx), verified.

    The graph holds each layer's effective weights (exact zeros, N:M groups along K), action
    scaling and metadata (env, sizes, bounds, per-layer pattern, training config). Export refuses
    when the weights break the run's N:M pattern, when the file's actions on the policy's own states
    differ from torch's by more than the precision's tolerance (a fraction of the action range), or
    when its closed-loop return on the same seeds falls below torch's beyond --return-margin and
    noise (then --allow-worse-return writes it with a warning). Wide random inputs are reported.
    --dtype fp16 writes actor.fp16.onnx: fp16 weights and math, the input TensorRT 11's strongly
    typed builder needs; --io-dtype picks the input/output type (default: same as --dtype).
    --dtype int8 writes actor.int8.onnx: int8 Q/DQ (ONNX Runtime's static quantizer: symmetric
    per-channel weights with the N:M zeros kept zero, activations calibrated on the policy's own
    observations or --calibration), fp32 input/output, checked like every precision. --int8-target
    ort (default) quantizes hidden layers' outputs as uint8, which ONNX Runtime runs as integer
    GEMMs on a CPU, its first layer (K = the observation width) int8 or fp32 as measured for the
    policy (--int8-first-layer fixes it); --int8-target tensorrt uses the settings TensorRT builds
    sparse int8 engines from (signed activations, fp32 Gemm outputs), which ONNX Runtime runs slower
    than fp32.
    --format nm-packed writes actor.nm.npz: N:M values plus in-group indices, as sparse tensor
    cores store them, with a loader that rebuilds the exact model (with --dtype int8: int8 values,
    their sizes reported against dense int8 and dense fp32).
    --format c writes actor.c + actor.h: one dependency-free C99 file whose N:M layers skip the pruned
    weights (entry points nmrl_policy_act and nmrl_policy_act_batch, renamed by --c-prefix), compiled
    here with the system C compiler and checked like every precision before it is written; with
    --dtype int8 the C computes the quantized graph (int8 weights, int32 sums). RUN_DIR may also be a
    policy file nmrl wrote (.onnx or .nm.npz, fp32 or int8): its C is checked against that file under
    ONNX Runtime and written beside it.

    Args:
        run_dir: the run directory (runs/<run>), or with --format c an .onnx/.nm.npz policy file.
        dtype: weights and arithmetic of the graph.
        io_dtype: input/output tensor type; "same" follows --dtype.
        format: onnx, nm-packed (values + in-group indices), or c (C source + header).
        checkpoint: which checkpoint to export.
        output: file to write (default: actor[.fp16|.int8].onnx / actor[.fp16|.int8].nm.npz in the run directory);
            an existing file is replaced only if nmrl wrote it as that kind of file (for c: the .c; the .h beside it).
        env: confirms a 'module:Env' id saved in the run (nmrl never imports a module named only by a file).
        check_episodes: closed-loop episodes of the torch policy and the file (seeds 0..N-1); the torch
            policy's states on them are the on-policy parity states.
        return_margin: the file may score at most this fraction of |torch return| lower (beyond the
            95% confidence interval of the per-episode differences).
        allow_worse_return: write a file whose closed-loop return falls short anyway (with a warning).
        pad_k: pad the first layer's K (the observation width) with zero columns to a multiple of 4
            inside the graph, so that every GEMM is 2:4-eligible; the input stays the env's width.
        calibration: int8 calibration observations, an .npy [count, obs_dim] (default: rollouts of the
            run's own policy in its env, seeds 1000.., plus random-action states).
        int8_target: the runtime the int8 file is for: ort (ONNX Runtime CPU) or tensorrt.
        int8_first_layer: measure (ort: quantize it both ways, time both at batch 256 under ONNX
            Runtime and keep int8 only if clearly faster and as accurate; tensorrt: int8), fp32, or int8.
        c_prefix: the C entry points' prefix (<prefix>_act, <prefix>_act_batch, <PREFIX>_OBS_DIM, ...), so
            that several policies link into one program.
    """
    from nmrl.envs import confirm_env_id
    from nmrl.export.pipeline import c_output_for, default_output, export_c_file, export_run
    from nmrl.export.report import console as report_console
    from nmrl.export.report import print_report

    confirm_env_id(env)
    from_file = Path(run_dir).is_file()
    if from_file and format != "c":
        raise NmrlError(f"{run_dir} is a file: a policy file exports only to --format c; give the run directory")
    if from_file and (dtype != "fp32" or io_dtype not in ("same", "fp32") or pad_k or calibration):
        raise NmrlError("--dtype, --io-dtype, --pad-k, --calibration do not apply to a policy file: it compiles as is")
    if output is None:
        output = c_output_for(run_dir) if from_file else default_output(run_dir, dtype, format)
    refuse_foreign_file(Path(output), format)
    console = report_console()
    if from_file:
        with console.status("generating C, compiling it and checking it closed-loop..."):
            result = export_c_file(
                run_dir,
                output,
                c_prefix,
                episodes=check_episodes,
                return_margin=return_margin,
                allow_worse_return=allow_worse_return,
            )
    else:
        with console.status("exporting and checking the file closed-loop..."):
            result = export_run(
                run_dir,
                dtype,
                None if io_dtype == "same" else io_dtype,
                checkpoint,
                output,
                format,
                episodes=check_episodes,
                return_margin=return_margin,
                allow_worse_return=allow_worse_return,
                pad_k=pad_k,
                calibration=calibration,
                int8_target=int8_target,
                int8_first_layer=int8_first_layer,
                c_prefix=c_prefix,
            )
    print_report(result.check, console)
    for line in result.verification.lines():
        console.print(line, highlight=False, soft_wrap=True)
    if result.quantization is not None:
        console.print(str(result.quantization), highlight=False, soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]{warning}[/]")
    if result.packed is not None:
        packed = result.packed
        versus_fp32 = (
            f", {packed.dense_fp32_bytes:,} B dense fp32 (ratio {packed.ratio_to_fp32:.3f})"
            if packed.dtype != "float32"
            else ""
        )
        console.print(
            f"nm-packed {packed.pattern} {packed.dtype}: GEMM weights {packed.packed_bytes:,} B vs "
            f"{packed.dense_bytes:,} B dense (ratio {packed.ratio:.3f}){versus_fp32}; file {packed.file_bytes:,} B"
        )
    if result.c_source is not None:
        from nmrl.export.c_source import c_weight_bytes, nm_packed_bytes

        program = result.c_source.program
        for layer in program.layers:
            console.print(f"C {layer.describe()}", highlight=False, soft_wrap=True)
        console.print(
            f"C weights {c_weight_bytes(result.c_source):,} B (kernel layout, padding included) vs nm-packed "
            f"{nm_packed_bytes(program):,} B; entry points {result.c_source.prefix}_act, "
            f"{result.c_source.prefix}_act_batch",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"wrote {result.path} and {result.path.with_suffix('.h')}", highlight=False, soft_wrap=True)
        return
    console.print(f"wrote {result.path}")


def refuse_foreign_file(path: Path, kind: Literal["onnx", "nm-packed", "c"]) -> None:
    """nmrl replaces an existing file only if it wrote that file as the same kind (an exported
    policy ONNX, nm-packed file or generated C): a checkpoint, a config or someone else's model or
    source is never lost to a mistyped --output."""
    if kind == "c":
        from nmrl.export.c_source import refuse_foreign_c

        refuse_foreign_c(path)
        return
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise NmrlError(f"--output {path} exists and is not a regular file")
    if kind == "onnx":
        import onnx

        from nmrl.policy_file import FORMAT, metadata_of, read_value

        try:
            metadata = metadata_of(onnx.load(str(path), load_external_data=False))
        except Exception:  # protobuf raises several types for bytes that are not an ONNX model
            metadata = {}
        ours = read_value(metadata, "format") == FORMAT
    else:
        from nmrl.export.packed import load_packed

        try:
            load_packed(path)
            ours = True
        except NmrlError:
            ours = False
    if not ours:
        what = "a policy ONNX file" if kind == "onnx" else "an nm-packed file"
        raise NmrlError(f"{path} exists and is not {what} written by nmrl: refusing to overwrite it")


def inspect(model: Annotated[Path, tyro.conf.Positional]) -> int:
    """Which GEMM layers of an ONNX file are N:M, which are 2:4-eligible for sparse tensor cores, and
    why not. Reads the file only (onnx + numpy, no PyTorch). Exits 1 when the file's weights break
    the N:M pattern its nmrl metadata claims (the run's pattern, or a layer's entry in nmrl.layers),
    or when a claim has nothing to be checked on (no GEMM weight nmrl can read).

    Args:
        model: the .onnx file.
    """
    from nmrl.export.report import print_report
    from nmrl.export.verify import claim_status, inspect_model

    check = inspect_model(model)
    print_report(check)
    return 1 if claim_status(check).failed else 0
