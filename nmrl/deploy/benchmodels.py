"""The models ``nmrl bench`` times: a run's actor (or an ONNX file), synthetic wide actors, and
the dense twin of each, in every precision asked (fp32, fp16, int8); plus the results tables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from nmrl.deploy.bench import REFERENCE_DTYPE, BenchModel, Timing, ratios, relative_to_fp32
from nmrl.deploy.policy import BACKENDS, Policy, accepted_options, build_for, load_policy
from nmrl.errors import NmrlError
from nmrl.export.report import untrusted

if TYPE_CHECKING:  # onnx_export pulls in torch and onnx: imported where a model is built
    from nmrl.export.onnx_export import DType
    from nmrl.export.quantize import Int8Target


def _load(path: Path, backend: str, options: dict, scratch: bool = False) -> Policy:
    """Load ``path`` on ``backend``; for a ``scratch`` ONNX file (one bench wrote itself) run the
    backend's explicit build step first (TensorRT engines): the user's own files are never built."""
    if scratch:
        build_for(backend, path, **options)
    return load_policy(path, backend, **accepted_options(backend, options))


def _loader(path: Path, backend: str, options: dict, scratch: bool = False) -> Callable[[], Policy]:
    """A loader bench calls when it times ``backend`` (``.args``: the file and backend it loads)."""
    return functools.partial(_load, path, backend, options, scratch)


def _onnx_loaders(
    path: Path, backends: list[str], options: dict, scratch: bool = False
) -> dict[str, Callable[[], Policy]]:
    """Loaders of the backends that run an .onnx file (``options``: threads, max_batch, ... as each
    loader accepts them); ``scratch``: bench wrote ``path`` and builds what it needs."""
    return {
        backend: _loader(path, backend, options, scratch) for backend in backends if BACKENDS[backend].takes == "onnx"
    }


def int8_target_of(backend: str) -> Int8Target:
    """The int8 recipe (``nmrl export --int8-target``) a backend runs: TensorRT's for the TensorRT
    flavours, ONNX Runtime's for the others."""
    return "tensorrt" if backend.startswith("tensorrt") else "ort"


def _run_backends(backends: list[str]) -> list[str]:
    """The backends other than torch that load a run directory themselves (e.g. torch-2:4)."""
    return [b for b in backends if b != "torch" and BACKENDS[b].takes == "run"]


def _run_loaders(run_dir: Path | None, backends: list[str], options: dict, dense: bool, dtype: str) -> dict:
    """Loaders of the run-loading backends (other than torch) that compute in ``dtype``; their dense
    twin is ``dense=True``. Without a run directory (synthetic actors) there are none."""
    loaders = {}
    for backend in _run_backends(backends):
        if BACKENDS[backend].dtype != dtype or run_dir is None:
            continue
        wanted = {**options, "dense": dense}
        if dense and "dense" not in accepted_options(backend, wanted):
            continue  # the backend has no dense twin of its own
        loaders[backend] = _loader(run_dir, backend, wanted)
    return loaders


def _module_models(
    name: str,
    module,
    obs_dim: int,
    act_dim: int,
    claimed,
    dtypes: list[DType],
    threads: int,
    models_dir: Path,
    backends: list[str],
    metadata: dict,
    options: dict,
    run_dir: Path | None = None,
) -> list[BenchModel]:
    """Sparse model and dense twin from a torch policy, in each of ``dtypes``: torch loaders (fp32,
    fp16), exported ONNX files for the ONNX backends, and the run directory for backends that load
    runs themselves (at their own precision, which may add a dtype to the requested ones)."""
    from nmrl.deploy.torch_backend import TorchPolicy
    from nmrl.export.onnx_export import dense_twin_module, export_policy, save_onnx
    from nmrl.export.twin import dense_twin_onnx

    slug = name.replace(" ", "_").replace(":", "of")
    onnx_backends = [b for b in backends if BACKENDS[b].takes == "onnx"]
    # (sparse, dense twin, the backends that run them) per dtype: one pair for every ONNX backend,
    # except at int8, where each backend gets the recipe it runs (TensorRT rejects the ORT recipe's
    # u8 files).
    onnx_pairs: dict[str, list[tuple[Path, Path, list[str]]]] = {}
    # The float exports; the fp32 one is made once: fp32 rows time it and int8 quantizes it.
    exported = {}
    for float_dtype in dict.fromkeys("fp32" if d == "int8" else d for d in dtypes):
        sparse_path = models_dir / f"{slug}.sparse.{float_dtype}.onnx"
        result = export_policy(sparse_path, module, obs_dim, act_dim, claimed, metadata, float_dtype)
        exported[float_dtype] = result.model
        if float_dtype in dtypes:
            dense_path = models_dir / f"{slug}.dense.{float_dtype}.onnx"
            save_onnx(dense_twin_onnx(result.model), dense_path)
            onnx_pairs[float_dtype] = [(sparse_path, dense_path, onnx_backends)]
    if "int8" in dtypes:
        # Each pair: the fp32 actor and its fp32 dense twin, quantized as `nmrl export --dtype int8
        # --int8-target T` does, calibrated on the same unit-scale Gaussian observations (latency
        # does not depend on the calibration; accuracy is export's job).
        from nmrl.export.observations import random_observations
        from nmrl.export.quantize import quantize_int8

        calibration = random_observations(obs_dim, 1024, 0, scale=1.0)
        by_target: dict[Int8Target, list[str]] = {}
        for backend in onnx_backends:
            by_target.setdefault(int8_target_of(backend), []).append(backend)
        onnx_pairs["int8"] = []
        fp32 = exported["fp32"]
        for target, group in by_target.items():
            sparse_path = models_dir / f"{slug}.sparse.int8-{target}.onnx"
            dense_path = models_dir / f"{slug}.dense.int8-{target}.onnx"
            for path, model in ((sparse_path, fp32), (dense_path, dense_twin_onnx(fp32))):
                save_onnx(quantize_int8(model, calibration, "Gaussian observations (bench)", target)[0], path)
            onnx_pairs["int8"].append((sparse_path, dense_path, group))
    twin = dense_twin_module(module)
    own = [BACKENDS[b].dtype for b in _run_backends(backends)] if run_dir is not None else []
    models = []
    for dtype in dict.fromkeys([*dtypes, *own]):
        for variant, torch_module in (("sparse", module), ("dense", twin)):
            loaders: dict[str, Callable[[], Policy]] = {}
            for sparse_file, dense_file, group in onnx_pairs.get(dtype, []):
                path = sparse_file if variant == "sparse" else dense_file
                loaders.update(_onnx_loaders(path, group, options, scratch=True))
            loaders.update(_run_loaders(run_dir, backends, options, variant == "dense", dtype))
            # torch eager has no int8 Q/DQ policy here; it times only the dtypes asked for.
            if "torch" in backends and dtype in dtypes and dtype != "int8":
                loaders["torch"] = functools.partial(
                    TorchPolicy, torch_module, obs_dim, act_dim, threads=threads, dtype=dtype
                )
            if loaders:
                models.append(BenchModel(name, variant, dtype, loaders))
    return models


def build_models(
    target: Path | None,
    widths: list[int],
    pattern: str,
    dtypes: list[DType],
    threads: int,
    models_dir: Path,
    obs_dim: int,
    act_dim: int,
    checkpoint: str,
    backends: list[str],
    console: Console,
    max_batch: int = 4096,
) -> list[BenchModel]:
    """Sparse + dense-twin BenchModels for the target and each synthetic width, in each of
    ``dtypes`` (an .onnx target in its own). Loaders get ``threads`` and ``max_batch`` (the largest
    batch timed) when they take them. Combinations that cannot run are left out with a printed
    reason: torch at int8, backends that load runs at another precision than their own."""
    from nmrl.export.verify import claimed_pattern

    options = {"threads": threads, "max_batch": max_batch}
    models: list[BenchModel] = []
    run_pattern = None
    if (target is not None and Path(target).suffix != ".onnx") or widths:
        if "torch" in backends and "int8" in dtypes:
            console.print(
                "[yellow]torch skipped at int8[/]: PyTorch eager has no int8 policy (int8 rows: ONNX backends)"
            )
        if target is not None and Path(target).suffix != ".onnx":
            for backend in _run_backends(backends):
                own = BACKENDS[backend].dtype
                if any(dtype != own for dtype in dtypes):
                    console.print(f"[yellow]{backend} runs {own} only[/]: its rows are timed once, labelled {own}")
    if target is not None:
        target = Path(target)
        if target.suffix == ".onnx":
            models += _onnx_file_models(target, backends, options, models_dir, console, dtypes)
        else:
            from nmrl.export.pipeline import run_metadata
            from nmrl.sparsity.spec import nm_pattern
            from nmrl.train.run import load_trained_actor as load_run

            loaded = load_run(target, checkpoint)
            run_pattern = nm_pattern(loaded.config.spec)
            hidden = "-".join(map(str, loaded.config.hidden))
            name = f"{loaded.env_id} {hidden} {loaded.config.sparsity}"
            models += _module_models(
                name,
                loaded.policy,
                loaded.obs_dim,
                loaded.act_dim,
                run_pattern,
                dtypes,
                threads,
                models_dir,
                backends,
                run_metadata(loaded),
                options,
                run_dir=target,
            )
            obs_dim, act_dim = loaded.obs_dim, loaded.act_dim
    if widths:
        import torch

        from nmrl.sparsity import sparsify
        from nmrl.sparsity.pattern import NMPattern
        from nmrl.train.networks import Actor

        synthetic = claimed_pattern(pattern) if pattern else (run_pattern or NMPattern(2, 4))
        if synthetic is None:
            raise NmrlError(f"--pattern must be an N:M pattern like 2:4, got {pattern!r}")
        for width in widths:
            torch.manual_seed(width)
            actor = Actor(obs_dim, act_dim, [-1.0] * act_dim, [1.0] * act_dim, hidden=(width, width))
            sparsify(actor, synthetic)
            name = f"synthetic {obs_dim}-{width}-{width}-{act_dim} {synthetic}"
            models += _module_models(
                name, actor, obs_dim, act_dim, synthetic, dtypes, threads, models_dir, backends, {}, options
            )
        skipped = _run_backends(backends)
        if skipped:
            console.print(
                f"[yellow]{', '.join(skipped)} skipped for synthetic actors[/]: it loads run directories only"
            )
    return models


def _onnx_file_models(
    path: Path, backends: list[str], options: dict, models_dir: Path, console: Console, dtypes: list[DType]
) -> list[BenchModel]:
    """The file and its dense twin, labelled with the file's own precision (its GEMM weights' dtype,
    as inspect reports it; int8 when any is): --dtype does not convert a given file."""
    import onnx

    from nmrl.export.report import short_dtype
    from nmrl.export.twin import dense_twin_onnx
    from nmrl.export.verify import claim_warning, inspect_model, load_onnx

    model = load_onnx(path)
    # A quantized file is an int8 policy even where a layer stays float (the ort recipe's first one).
    precisions = list(dict.fromkeys(short_dtype(layer.dtype) for layer in inspect_model(model).layers))
    dtype = "int8" if "int8" in precisions else "+".join(precisions) or "fp32"
    if dtypes != [dtype]:
        console.print(
            f"[yellow]{path.name} is timed in its own precision ({dtype})[/]: --dtype {','.join(dtypes)} "
            "applies to run directories and --widths",
            highlight=False,
        )
    warning = claim_warning(path)
    if warning:
        console.print(f"[yellow]{untrusted(warning, None)}[/]", highlight=False, soft_wrap=True)
    skipped = [b for b in backends if BACKENDS[b].takes == "run"]
    if skipped:
        console.print(
            f"[yellow]{', '.join(skipped)} skipped for an .onnx target[/]: it needs the run's checkpoint "
            "(pass the run directory instead)"
        )
    dense_path = models_dir / f"{path.stem}.dense.onnx"
    # onnx.save, not nmrl.export's save_onnx: that module needs PyTorch, and benching an ONNX file
    # must work without it (the Jetson image has none); this scratch file needs no atomic write.
    dense_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(dense_twin_onnx(model), str(dense_path))
    return [
        BenchModel(path.stem, "sparse", dtype, _onnx_loaders(path, backends, options)),
        BenchModel(path.stem, "dense", dtype, _onnx_loaders(dense_path, backends, options, scratch=True)),
    ]


def _us(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _rate(value: float) -> str:
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def _cell_order(timings: list[Timing]) -> list[Timing]:
    """Sparse rows grouped by model, then dtype, backend and batch, each in first-timed order."""
    fields = ("model", "dtype", "backend", "batch")
    orders = {
        field: {value: i for i, value in enumerate(dict.fromkeys(getattr(t, field) for t in timings))}
        for field in fields
    }
    return sorted(
        (t for t in timings if t.variant == "sparse"),
        key=lambda t: tuple(orders[field][getattr(t, field)] for field in fields),
    )


def print_table(timings: list[Timing], console: Console) -> None:
    """Sparse vs dense per model, dtype, backend and batch: p50/p90/p99 (µs), the sparse actor's
    throughput (observations/s at p50) and dense p50 / sparse p50 (> 1: the zeros made it faster);
    one section per (model, dtype). Then, when fp32 and another dtype were timed, each dtype's speed
    relative to fp32 (see :func:`print_dtype_table`)."""
    by_key = {(t.model, t.variant, t.dtype, t.backend, t.batch): t for t in timings}
    speedups = {(r.model, r.dtype, r.backend, r.batch): r.speedup for r in ratios(timings)}
    table = Table(title="latency per call (µs): sparse actor vs dense twin", title_justify="left")
    columns = (
        "model",
        "dtype",
        "backend",
        "batch",
        "sparse p50",
        "p90",
        "p99",
        "dense p50",
        "p99",
        "obs/s",
        "dense/sparse",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "dtype", "backend") else "right", no_wrap=True)
    group = None
    for t in _cell_order(timings):
        if group is not None and group != (t.model, t.dtype):
            table.add_section()
        group = (t.model, t.dtype)
        dense = by_key.get((t.model, "dense", t.dtype, t.backend, t.batch))
        speedup = speedups.get((t.model, t.dtype, t.backend, t.batch))
        table.add_row(
            untrusted(t.model, 120),  # a file's name, or a run's env id and settings
            t.dtype,
            t.backend,
            str(t.batch),
            _us(t.p50_us),
            _us(t.p90_us),
            _us(t.p99_us),
            _us(dense.p50_us) if dense else "-",
            _us(dense.p99_us) if dense else "-",
            _rate(t.throughput),
            f"{speedup:.2f}x" if speedup is not None else "-",
        )
    console.print(table)
    print_dtype_table(timings, console)


def print_dtype_table(timings: list[Timing], console: Console) -> None:
    """fp32 p50 / p50 of every other dtype (> 1: faster than fp32), per model, backend and batch,
    for the sparse actor and its dense twin; printed only when fp32 and another dtype were timed."""
    relative = {
        (t.model, t.variant, t.dtype, t.backend, t.batch): value for t, value in relative_to_fp32(timings).items()
    }
    others = list(dict.fromkeys(t.dtype for t in timings if t.dtype != REFERENCE_DTYPE))
    if not relative or not others:
        return
    table = Table(
        title="speed relative to fp32 (fp32 p50 / p50, same run; > 1: faster than fp32)", title_justify="left"
    )
    for column in ("model", "backend", "batch"):
        table.add_column(column, justify="right" if column == "batch" else "left", no_wrap=True)
    for dtype in others:
        for variant in ("sparse", "dense"):
            table.add_column(f"{dtype} {variant}", justify="right", no_wrap=True)
    group = None
    for t in _cell_order(timings):
        if t.dtype != REFERENCE_DTYPE:
            continue
        if group is not None and group != t.model:
            table.add_section()
        group = t.model
        cells = [
            relative.get((t.model, variant, dtype, t.backend, t.batch))
            for dtype in others
            for variant in ("sparse", "dense")
        ]
        table.add_row(
            untrusted(t.model, 120), t.backend, str(t.batch), *("-" if c is None else f"{c:.2f}x" for c in cells)
        )
    console.print(table)
