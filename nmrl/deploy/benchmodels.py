"""The models ``nmrl bench`` times: a run's actor (or an ONNX file), synthetic wide actors, and
the dense twin of each; plus the results table."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from nmrl.deploy.bench import BenchModel, Timing, ratios
from nmrl.deploy.policy import BACKENDS, Policy, accepted_options, build_for, load_policy
from nmrl.errors import NmrlError

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


def _run_loaders(run_dir: Path | None, backends: list[str], options: dict, dense: bool) -> dict:
    """Loaders of the backends other than torch that load a run directory themselves (e.g. torch-2:4);
    their dense twin is ``dense=True``. Without a run directory (synthetic actors) there are none."""
    loaders = {}
    for backend in backends:
        if backend == "torch" or BACKENDS[backend].takes != "run" or run_dir is None:
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
    dtype: DType,
    threads: int,
    models_dir: Path,
    backends: list[str],
    metadata: dict,
    options: dict,
    run_dir: Path | None = None,
) -> list[BenchModel]:
    """Sparse model and dense twin from a torch policy: torch loaders, exported ONNX files for the
    ONNX backends, and the run directory for backends that load runs themselves."""
    from nmrl.deploy.torch_backend import TorchPolicy
    from nmrl.export.onnx_export import dense_twin_module, export_policy, save_onnx
    from nmrl.export.twin import dense_twin_onnx

    slug = name.replace(" ", "_").replace(":", "of")
    # (sparse, dense twin) files per group of ONNX backends: one pair for every backend, except at
    # int8, where each backend gets the recipe it runs (TensorRT rejects the ORT recipe's u8 files).
    onnx_pairs: dict[str, tuple[Path, Path, list[str]]] = {}
    if dtype == "int8":
        # Each pair: the fp32 actor and its fp32 dense twin, quantized as `nmrl export --dtype int8
        # --int8-target T` does, calibrated on the same unit-scale Gaussian observations (latency
        # does not depend on the calibration; accuracy is export's job).
        from nmrl.export.onnx_export import random_observations
        from nmrl.export.quantize import quantize_int8

        result = export_policy(models_dir / f"{slug}.sparse.fp32.onnx", module, obs_dim, act_dim, claimed, metadata)
        calibration = random_observations(obs_dim, 1024, 0, scale=1.0)
        by_target: dict[Int8Target, list[str]] = {}
        for backend in backends:
            by_target.setdefault(int8_target_of(backend), []).append(backend)
        for target, group in by_target.items():
            sparse_path = models_dir / f"{slug}.sparse.int8-{target}.onnx"
            dense_path = models_dir / f"{slug}.dense.int8-{target}.onnx"
            for path, fp32 in ((sparse_path, result.model), (dense_path, dense_twin_onnx(result.model))):
                save_onnx(quantize_int8(fp32, calibration, "Gaussian observations (bench)", target)[0], path)
            onnx_pairs[target] = (sparse_path, dense_path, group)
    else:
        sparse_path = models_dir / f"{slug}.sparse.{dtype}.onnx"
        dense_path = models_dir / f"{slug}.dense.{dtype}.onnx"
        result = export_policy(sparse_path, module, obs_dim, act_dim, claimed, metadata, dtype)
        save_onnx(dense_twin_onnx(result.model), dense_path)
        onnx_pairs[dtype] = (sparse_path, dense_path, backends)
    twin = dense_twin_module(module)
    models = []
    for variant, torch_module in (("sparse", module), ("dense", twin)):
        loaders: dict[str, Callable[[], Policy]] = {}
        for sparse_file, dense_file, group in onnx_pairs.values():
            path = sparse_file if variant == "sparse" else dense_file
            loaders.update(_onnx_loaders(path, group, options, scratch=True))
        loaders.update(_run_loaders(run_dir, backends, options, dense=variant == "dense"))
        if "torch" in backends and dtype != "int8":  # torch eager has no int8 Q/DQ policy here
            loaders["torch"] = functools.partial(
                TorchPolicy, torch_module, obs_dim, act_dim, threads=threads, dtype=dtype
            )
        models.append(BenchModel(name, variant, loaders))
    return models


def build_models(
    target: Path | None,
    widths: list[int],
    pattern: str,
    dtype: DType,
    threads: int,
    models_dir: Path,
    obs_dim: int,
    act_dim: int,
    checkpoint: str,
    backends: list[str],
    console: Console,
    max_batch: int = 4096,
) -> list[BenchModel]:
    """Sparse + dense-twin BenchModels for the target and each synthetic width. Loaders get
    ``threads`` and ``max_batch`` (the largest batch timed) when they take them."""
    from nmrl.export.verify import claimed_pattern

    options = {"threads": threads, "max_batch": max_batch}
    models: list[BenchModel] = []
    run_pattern = None
    if target is not None:
        target = Path(target)
        if target.suffix == ".onnx":
            models += _onnx_file_models(target, backends, options, models_dir, console)
        else:
            from nmrl.export.onnx_export import run_metadata
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
                dtype,
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
                name, actor, obs_dim, act_dim, synthetic, dtype, threads, models_dir, backends, {}, options
            )
        skipped = [b for b in backends if b != "torch" and BACKENDS[b].takes == "run"]
        if skipped:
            console.print(
                f"[yellow]{', '.join(skipped)} skipped for synthetic actors[/]: it loads run directories only"
            )
    return models


def _onnx_file_models(
    path: Path, backends: list[str], options: dict, models_dir: Path, console: Console
) -> list[BenchModel]:
    import onnx

    from nmrl.export.twin import dense_twin_onnx
    from nmrl.export.verify import claim_warning, load_onnx

    warning = claim_warning(path)
    if warning:
        console.print(f"[yellow]{warning}[/]", highlight=False, soft_wrap=True)
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
    onnx.save(dense_twin_onnx(load_onnx(path)), str(dense_path))
    return [
        BenchModel(path.stem, "sparse", _onnx_loaders(path, backends, options)),
        BenchModel(path.stem, "dense", _onnx_loaders(dense_path, backends, options, scratch=True)),
    ]


def _us(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _rate(value: float) -> str:
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def print_table(timings: list[Timing], console: Console) -> None:
    """Sparse vs dense per model, backend and batch: p50/p90/p99 (µs), the sparse actor's throughput
    (observations/s at p50) and dense p50 / sparse p50 (> 1: the zeros made it faster)."""
    by_key = {(t.model, t.variant, t.backend, t.batch): t for t in timings}
    speedups = {(r.model, r.backend, r.batch): r.speedup for r in ratios(timings)}
    table = Table(title="latency per call (µs): sparse actor vs dense twin", title_justify="left")
    columns = (
        "model",
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
        table.add_column(column, justify="left" if column in ("model", "backend") else "right", no_wrap=True)
    for t in timings:
        if t.variant != "sparse":
            continue
        dense = by_key.get((t.model, "dense", t.backend, t.batch))
        speedup = speedups.get((t.model, t.backend, t.batch))
        table.add_row(
            t.model,
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
