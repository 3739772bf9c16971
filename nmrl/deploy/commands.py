"""The ``nmrl deploy eval`` and ``nmrl bench`` verbs."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import tyro

from nmrl.deploy.policy import BACKENDS
from nmrl.errors import NmrlError

if TYPE_CHECKING:  # onnx_export pulls in torch: bench of an .onnx file must run without it
    from nmrl.export.onnx_export import DType

    BackendName = str
else:  # --backend's choices in --help: the registered backends
    BackendName = Literal[tuple(BACKENDS)]


def _csv_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise NmrlError(f"--{what} needs a comma-separated list, got {text!r}")
    return items


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(item) for item in _csv_list(text, what)]
    except ValueError:
        raise NmrlError(f"--{what} needs comma-separated integers, got {text!r}") from None
    if any(value < 1 for value in values):
        raise NmrlError(f"--{what} values must be at least 1, got {text!r}")
    return values


BENCH_DTYPES = ("fp32", "fp16", "int8")


def _check_threads(threads: int) -> None:
    """--threads is 0 (the runtime's default) up to this machine's cores: -1 was passed on to ONNX
    Runtime as is ("-1 threads"), 100000000 made it start threads until the command hung."""
    cores = os.cpu_count() or 1
    if not 0 <= threads <= cores:
        raise NmrlError(f"--threads must be 0 (the runtime's default) to {cores} (the cores here), got {threads}")


def _check_bench_numbers(calls: int, warmup: int, max_seconds: float, threads: int, obs_dim: int, act_dim: int) -> None:
    """Every number bench times with is in range: NaN seconds made the budget arithmetic fail, and
    --calls 0 still printed a latency table of 10 calls."""
    _check_threads(threads)
    if calls < 1:
        raise NmrlError(f"--calls must be at least 1, got {calls}")
    if warmup < 0:
        raise NmrlError(f"--warmup must be 0 or more, got {warmup}")
    if not (math.isfinite(max_seconds) and max_seconds > 0):
        raise NmrlError(f"--max-seconds must be a finite number of seconds above 0, got {max_seconds}")
    if obs_dim < 1 or act_dim < 1:
        raise NmrlError(f"--obs-dim and --act-dim must be at least 1, got {obs_dim} and {act_dim}")


def _check_output_folder(out: Path) -> None:
    """--out names a folder nmrl can create or write into (not a file such as /etc/passwd)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out and not out.is_dir():
        raise NmrlError(f"--out {out} is a file, not a folder")
    if not existing.is_dir():
        raise NmrlError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NmrlError(f"--out {out}: {existing} is not writable")


def _dtype_list(text: str) -> list[DType]:
    """``--dtype fp32,fp16,int8`` -> the precisions in the order given, each once."""
    dtypes = list(dict.fromkeys(_csv_list(text, "dtype")))
    unknown = [dtype for dtype in dtypes if dtype not in BENCH_DTYPES]
    if unknown:
        raise NmrlError(f"--dtype takes {', '.join(BENCH_DTYPES)} or a comma-separated list of them, got {text!r}")
    return cast("list[DType]", dtypes)


def deploy_eval(
    model: Annotated[Path, tyro.conf.Positional],
    env: str = "",
    episodes: int = 10,
    seed: int = 0,
    backend: BackendName = "ort",
    threads: int = 1,
    env_kwargs: str = "",
    capture_video: bool = False,
    baseline: Literal["none", "random"] = "none",
) -> None:
    """Run a deployed policy closed-loop in its environment, with the env settings it was trained
    with (the file's nmrl.env_kwargs), and print the mean ± std return.

    MODEL is an exported .onnx file (backends ort, ort-cuda, ...) or a run directory (torch, or
    its actor.onnx for the others). --env defaults to the env stored in the file's metadata, unless
    that id names a Python module to import ('module:Env'): a file never chooses code to run, so
    such an id is used only when given with --env.
    Episode i resets with seed SEED + i, so runs with the same seed see the same initial states.

    Args:
        model: .onnx file, or run directory.
        env: Gymnasium id (default: the file's nmrl.env_id).
        episodes: number of episodes.
        seed: seed of the first episode.
        backend: the runtime (a .plan engine runs on its TensorRT flavour).
        threads: CPU threads of the runtime (0 = its default; at most the cores here).
        env_kwargs: other env settings to run under, a JSON object ('': the file's own, when the
            env is the file's).
        capture_video: write the first episode as an MP4 to videos/<file>-<backend>-seed<SEED>.mp4
            beside the file (in the run directory for one), rendered offscreen (needs the video
            extra; without a display MuJoCo draws through EGL).
        baseline: random: also run uniformly random actions (seeded by SEED) on the same seeds and
            print their return beside the policy's, to see what the policy adds.
    """
    from nmrl.deploy.policy import load_policy
    from nmrl.envs import (
        confirm_env_id,
        describe_env,
        env_dims,
        env_id_from_file,
        make_env,
        parse_env_kwargs,
    )
    from nmrl.export.verify import claim_warning
    from nmrl.train.evaluate import evaluate, video_path

    if episodes < 1:
        raise NmrlError(f"--episodes must be at least 1, got {episodes}")
    if seed < 0:  # Gymnasium refuses it, as a traceback after the policy was loaded
        raise NmrlError(f"--seed must be 0 or more, got {seed}")
    _check_threads(threads)
    confirm_env_id(env)  # typed by the user: a run directory naming the same id may use it
    settings = parse_env_kwargs(env_kwargs) if env_kwargs.strip() else None
    if model.suffix == ".plan" and backend == "ort":  # ONNX Runtime cannot read an engine file
        from nmrl.deploy.tensorrt import engine_flavour

        backend = engine_flavour(model)
    policy = load_policy(model, backend, threads=threads)
    warning = claim_warning(model) if BACKENDS[backend].takes == "onnx" else None
    if warning:
        print(warning, file=sys.stderr)
    if not env and not policy.env_id:
        policy.close()
        raise NmrlError(f"{model}: the file names no environment; pass --env")
    try:
        env_id = env or env_id_from_file(policy.env_id, model)
        if settings is None:  # the file's settings belong to the file's env
            own = env_id == policy.env_id
            settings = (policy.env_kwargs if own else None) or {}
        probe = make_env(env_id, kwargs=settings)
        obs_dim, act_dim, low, high = env_dims(probe)
        probe.close()
        if (obs_dim, act_dim) != (policy.obs_dim, policy.act_dim):
            raise NmrlError(
                f"{model} maps {policy.obs_dim} observations to {policy.act_dim} actions, but "
                f"{describe_env(env_id, settings)} has {obs_dim} and {act_dim}"
            )
        video = None
        if capture_video:
            folder, name = (model, backend) if model.is_dir() else (model.parent, f"{model.stem}-{backend}")
            video = video_path(folder, name, seed)
        result = evaluate(policy.act, env_id, episodes, seed, settings, video=video)
        random_result = None
        if baseline == "random":
            import numpy as np

            rng = np.random.default_rng(seed)
            lowest, highest = np.asarray(low, np.float32), np.asarray(high, np.float32)

            def random_action(_obs: np.ndarray) -> np.ndarray:
                return rng.uniform(lowest, highest).astype(np.float32)

            random_result = evaluate(random_action, env_id, episodes, seed, settings)
    finally:
        policy.close()
    print(f"{describe_env(env_id, settings)}  {model}  on {policy.describe()}")
    print(result.report(seed))
    print("returns: " + ", ".join(f"{r:.1f}" for r in result.returns))
    if random_result is not None:
        print(f"random actions, same seeds: {random_result.report(seed)}")
    if video is not None:
        print(f"video of episode 1 (seed {seed}, {result.lengths[0] + 1} frames): {video}")


def bench(
    target: Annotated[Path | None, tyro.conf.Positional] = None,
    backends: str = "torch,ort",
    batch: str = "1,16,256,4096",
    widths: str = "",
    pattern: str = "",
    dtype: str = "fp32",
    threads: int = 1,
    warmup: int = 20,
    calls: int = 200,
    max_seconds: float = 1.0,
    out: Path | None = None,
    obs_dim: int = 17,
    act_dim: int = 6,
    checkpoint: Literal["last", "best"] = "last",
    env: str = "",
) -> None:
    """Latency of a sparse actor and its dense twin (same graph, no zero weights) per precision, backend and batch.

    TARGET: a run directory (its checkpoint, exported afresh) or an .onnx file (no torch backend).
    --widths 256,1024,4096 adds synthetic actors with two hidden layers of those widths (sparsified
    with --pattern, default the run's or 2:4) to show where sparsity could pay. Prints p50/p90/p99
    latency, throughput and the dense/sparse ratio; writes bench.csv and bench.png to --out
    (default runs/<run>/bench or bench_results). --dtype fp16 times fp16 ONNX graphs; --dtype int8
    times int8 Q/DQ graphs of the actor and its dense twin (quantized as export does; no torch rows);
    --dtype fp32,fp16,int8 times all three in one run, interleaved, with each dtype's speed
    relative to fp32. An .onnx TARGET is timed in its own precision.

    Args:
        target: run directory or .onnx file (optional with --widths).
        backends: comma-separated backends (torch, ort, ort-cuda, ...); unavailable ones are skipped.
        batch: comma-separated batch sizes.
        widths: comma-separated hidden widths of synthetic 2-hidden-layer actors.
        pattern: N:M pattern of the synthetic actors (default: the run's, or 2:4).
        dtype: precision(s), comma-separated: fp32, fp16, int8 (e.g. fp32,fp16,int8).
        threads: CPU threads per runtime (0 = its default; at most the cores here).
        warmup: untimed calls per cell.
        calls: timed calls per cell (fewer when they would exceed --max-seconds).
        max_seconds: time budget of the timed calls per cell and variant.
        out: output folder for bench.csv, bench.png and the timed .onnx files.
        obs_dim: observation size of synthetic actors without a target.
        act_dim: action size of synthetic actors without a target.
        checkpoint: which checkpoint of a run directory.
        env: confirms a 'module:Env' id saved in a run directory (never imported otherwise).
    """
    from nmrl.envs import confirm_env_id

    confirm_env_id(env)

    from nmrl.deploy.bench import check_memory, plot, ratios, run_bench, verdict, write_csv
    from nmrl.deploy.benchmodels import build_models, print_table
    from nmrl.deploy.policy import unavailable_reason
    from nmrl.export.report import console as report_console
    from nmrl.export.report import untrusted
    from nmrl.extras import install_hint

    backend_list = _csv_list(backends, "backends")
    batches = _int_list(batch, "batch")
    dtypes = _dtype_list(dtype)
    width_list = _int_list(widths, "widths") if widths else []
    if target is None and not width_list:
        raise NmrlError("give a run directory or .onnx file to time, or --widths for synthetic actors")
    _check_bench_numbers(calls, warmup, max_seconds, threads, obs_dim, act_dim)
    # A target's sizes are known once it is loaded (time_policies checks its batch again then).
    check_memory(max(batches), obs_dim if width_list else 1, act_dim, width_list, len(dtypes))
    console = report_console()
    usable = []
    for backend in backend_list:
        reason = unavailable_reason(backend)
        if reason is None:
            usable.append(backend)
        else:
            console.print(f"[yellow]skipping backend {backend}[/]: {reason}")
    if not usable:
        raise NmrlError("none of the requested backends can run here")
    if out is None:
        out = Path(target) / "bench" if target is not None and Path(target).is_dir() else Path("bench_results")
    _check_output_folder(out)
    models = build_models(
        target,
        width_list,
        pattern,
        dtypes,
        threads,
        out / "models",
        obs_dim,
        act_dim,
        checkpoint,
        usable,
        console,
        max(batches),
    )
    with console.status("timing...") as status:
        timings, described = run_bench(
            models,
            usable,
            batches,
            warmup,
            calls,
            max_seconds,
            on_result=lambda t: status.update(
                f"timed {t.model} {t.variant} {t.dtype} {t.backend} batch {t.batch}: p50 {t.p50_us:.1f} µs"
            ),
            on_skip=lambda reason: console.print(f"[yellow]{untrusted(reason, None)}[/]", highlight=False),
        )
    if not timings:
        raise NmrlError("nothing was timed (no model runs on the requested backends)")
    print_table(timings, console)
    for backend, description in described.items():
        console.print(f"  {backend}: {description}")
    console.print(verdict(ratios(timings), described))
    write_csv(timings, out / "bench.csv")
    try:
        plot(timings, out / "bench.png")
    except ModuleNotFoundError as error:  # matplotlib is the plots extra: the numbers are written anyway
        hint = install_hint(error.name)
        if hint is None:
            raise
        console.print(f"wrote {out / 'bench.csv'}; bench.png not drawn: {hint}", markup=False, highlight=False)
    else:
        console.print(f"wrote {out / 'bench.csv'} and {out / 'bench.png'}")
