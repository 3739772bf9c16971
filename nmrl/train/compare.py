"""``nmrl compare``: train a grid of envs x sparsity methods x seeds, then tabulate and plot.

Each cell is an ordinary run (``<out>/<env>/runs/<method>__s<seed>``) trained by the shared loop,
in a local worker process or a Ray task (``nmrl.train.engines``). A cell is finished when its
``metrics.jsonl`` holds the evaluation at the last step; running the same command again skips
finished cells, resumes interrupted ones from their checkpoint and only then rebuilds the results,
so a grid can be stopped and continued at will. Per env: a table (IQM with a bootstrap CI, mean ±
std, costs) and curves; over envs: the return normalised by dense (``nmrl.train.aggregate``).

Methods (all on ``--algo``, td3 or sac):

=============  ==============================================================
``dense``      no sparsity
``N:M``        RNM: every network N:M (``2:4``, ``1:4``, ``1:8``, ...)
``ss-F``       static sparse, fraction F of the sparse layers' weights pruned
``ds-F``       dynamic sparse (SET): DS-TD3 / DS-SAC
``rigl-F``     dynamic sparse with gradient regrowth (RigL)
``tows-F``     TowS: SET + masked Adam + LeakyReLU
=============  ==============================================================
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tyro

from nmrl.errors import NmrlError, gist
from nmrl.files import atomic_write_text
from nmrl.sparsity.spec import UnstructuredSparsity, parse_sparsity
from nmrl.train.compare_report import MethodResult, write_results, write_summary
from nmrl.train.config import SharedConfig, TrainConfig
from nmrl.train.sparse import COSTS_FILE

METHOD_PREFIXES: dict[str, dict[str, Any]] = {
    "ss": {"topology": "static"},
    "ds": {"topology": "set"},
    "set": {"topology": "set"},
    "rigl": {"topology": "rigl"},
    "tows": {"topology": "set", "optimizer": "masked-adam", "activation": "leaky_relu"},
}


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a name and the config settings it changes."""

    name: str
    settings: dict[str, Any]

    @property
    def slug(self) -> str:
        """The name as a directory name (``2:4`` -> ``2of4``)."""
        return self.name.replace(":", "of")


def parse_method(text: str) -> Method:
    """``dense`` / ``2:4`` / ``ss-0.9`` / ``ds-0.5`` / ``rigl-0.9`` / ``tows-0.9`` -> Method."""
    name = text.strip()
    if name.lower() == "dense" or ":" in name:
        parse_sparsity(name)  # raises NmrlError for a bad pattern
        return Method(name.lower() if name.lower() == "dense" else name, {"sparsity": name, "topology": "auto"})
    prefix, _, fraction = name.partition("-")
    if prefix.lower() not in METHOD_PREFIXES or not fraction:
        raise NmrlError(
            f"unknown method {text!r}: use dense, an N:M pattern (2:4), or "
            f"{'/'.join(METHOD_PREFIXES)} with a sparsity, like ds-0.5 or tows-0.9"
        )
    if not isinstance(parse_sparsity(fraction), UnstructuredSparsity):
        raise NmrlError(f"method {text!r}: {prefix} needs an unstructured sparsity fraction like 0.9")
    return Method(name, {"sparsity": fraction, **METHOD_PREFIXES[prefix.lower()]})


def parse_methods(text: str) -> list[Method]:
    methods = [parse_method(part) for part in text.split(",") if part.strip()]
    if not methods:
        raise NmrlError("--methods is empty")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise NmrlError(f"--methods lists a method twice: {text}")
    return methods


# ---- one cell ---------------------------------------------------------------------------------
def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run, in step order ([] before the first)."""
    from nmrl.train.run import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = read_metrics(path)
    return sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["step"])


def is_finished(run_dir: Path, config: TrainConfig) -> bool:
    """The run evaluated at its last step, or stopped early at --stop-at-return."""
    target = config.stop_at_return
    return any(
        record["step"] >= config.total_steps or (target is not None and record["return_mean"] >= target)
        for record in read_evals(run_dir)
    )


# ---- the grid ---------------------------------------------------------------------------------
@dataclass
class Cell:
    env: str
    method: Method
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.runs_dir) / self.config.run_name

    @property
    def log_path(self) -> Path:
        return Path(self.config.runs_dir) / f"{self.config.run_name}.log"

    @property
    def label(self) -> str:
        return f"{self.env} {self.method.name} seed {self.seed}"


def parse_envs(text: str, default: str, env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """``--envs A,B`` (empty: ``--env``) -> env ids, each known to Gymnasium and taking
    ``env_kwargs`` (``--env-kwargs``, the settings of every env of the grid)."""
    from nmrl.envs import make_env

    envs = [part.strip() for part in text.split(",") if part.strip()] if text else [default]
    if len(set(envs)) != len(envs):
        raise NmrlError(f"--envs lists an env twice: {text}")
    for env_id in envs:
        make_env(env_id, kwargs=env_kwargs).close()  # NmrlError for a bad id or setting, before anything is trained
    return envs


def env_folder(out: Path, env: str) -> Path:
    """Each env's runs, table and curves live in ``<out>/<env>/``."""
    return out / env


def build_grid(
    base: SharedConfig, envs: Sequence[str], methods: Sequence[Method], seeds: int, first_seed: int, out: Path
) -> list[Cell]:
    """One cell per env x method x seed (seeds ``first_seed .. first_seed + seeds - 1``)."""
    cells = []
    for env in envs:
        for method in methods:
            for seed in range(first_seed, first_seed + seeds):
                # One torch thread per worker unless asked otherwise: workers share the cores.
                config = TrainConfig.from_shared(
                    base,
                    **method.settings,
                    env=env,
                    seed=seed,
                    runs_dir=env_folder(out, env) / "runs",
                    run_name=f"{method.slug}__s{seed}",
                    progress=False,
                    threads=base.threads or 1,
                )
                config.validate()
                cells.append(Cell(env, method, seed, config))
    return cells


# Settings a finished or interrupted cell may differ in from a new invocation of the same grid.
MAY_CHANGE = frozenset({"total_steps", "threads", "progress", "runs_dir", "device"})


def check_same_settings(cell: Cell) -> None:
    """Refuse to mix a grid's existing runs with different settings (their results would not be
    comparable, and a resume keeps the saved settings)."""
    saved_path = cell.run_dir / "config.json"
    if not saved_path.exists():
        return
    saved, wanted = TrainConfig.load(saved_path).flat_settings(), cell.config.flat_settings()
    changed = sorted(key for key in wanted if key not in MAY_CHANGE and saved.get(key) != wanted[key])
    if changed:
        raise NmrlError(
            f"{cell.run_dir} was trained with other settings ({', '.join(changed)}); "
            "use another --out for a different grid"
        )


ENGINES = ("local", "ray")
if TYPE_CHECKING:
    EngineName = str
else:  # --engine's choices in --help
    EngineName = Literal[ENGINES]


@dataclass
class EngineSettings:
    """How the grid's cells are run (``--engine`` and its options)."""

    engine: EngineName = "local"
    workers: int = 2
    address: str = ""
    retries: int = 2
    cell_gpus: float = 0.25


def run_grid(cells: Sequence[Cell], grid_file: Path, settings: EngineSettings) -> None:
    """Train every unfinished cell on the chosen engine."""
    from nmrl.train.engines import CellJob, run_local, run_ray
    from nmrl.train.grid_progress import GridProgress

    for cell in cells:
        check_same_settings(cell)
    todo = [cell for cell in cells if not is_finished(cell.run_dir, cell.config)]
    where = f"{settings.workers} worker process(es)" if settings.engine == "local" else "Ray"
    print(
        f"{len(cells) - len(todo)} of {len(cells)} cells already finished; training {len(todo)} on {where}",
        file=sys.stderr,
        flush=True,
    )
    if not todo:
        return
    for cell in todo:
        cell.log_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [CellJob(cell.label, cell.config, cell.log_path) for cell in todo]
    with GridProgress(jobs, finished_before=len(cells) - len(todo), total_cells=len(cells)) as progress:
        if settings.engine == "ray":
            outcome = run_ray(jobs, grid_file, settings.workers, settings.retries, settings.cell_gpus, progress)
        else:
            outcome = run_local(jobs, grid_file, settings.workers, settings.retries, progress)
    if outcome.failures:
        raise NmrlError(f"{len(outcome.failures)} cell(s) failed: " + "; ".join(outcome.failures))


# ---- results ----------------------------------------------------------------------------------
def collect(cells: Sequence[Cell], methods: Sequence[Method]) -> list[MethodResult]:
    """Per method, the results of ``cells`` (one env's cells)."""
    results = []
    for method in methods:
        finals: list[float] = []
        curves: dict[int, list[tuple[int, float]]] = {}
        costs: dict[str, Any] = {}
        for cell in (c for c in cells if c.method == method):
            evals = read_evals(cell.run_dir)
            curves[cell.seed] = [(r["step"], r["return_mean"]) for r in evals]
            if evals and is_finished(cell.run_dir, cell.config):
                finals.append(float(evals[-1]["return_mean"]))
            if not costs and (cell.run_dir / COSTS_FILE).exists():
                costs = json.loads((cell.run_dir / COSTS_FILE).read_text())["networks"]
        results.append(MethodResult(method, finals, curves, costs))
    return results


def refuse_single_env_layout(out: Path, envs: Sequence[str]) -> None:
    """A grid written before multi-env grids keeps its cells in ``<out>/runs``; run as it is, its
    finished cells would not be found and would train again. Say how to move them instead."""
    legacy = out / "runs"
    if legacy.is_dir() and not any(env_folder(out, env).exists() for env in envs):
        target = env_folder(out, envs[0]) / "runs"
        raise NmrlError(
            f"{out} holds a grid from an older nmrl ({legacy}); to keep its cells, move them first: "
            f"mkdir -p {target.parent} && mv {legacy} {target}"
        )


def default_out(base: SharedConfig, envs: Sequence[str]) -> Path:
    return Path(base.runs_dir) / f"compare__{'+'.join(envs)}__{base.algo}"


# compare's defaults for what a grid is made of: --report-only tells a flag given from one left out
DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_FIRST_SEED = "dense,2:4,ds-0.5", 3, 1
GRID_FILE = "grid.json"


def run_comparison(
    base: SharedConfig,
    methods: str,
    seeds: int = DEFAULT_SEEDS,
    first_seed: int = DEFAULT_FIRST_SEED,
    envs: str = "",
    out: Path | None = None,
    report_only: bool = False,
    settings: EngineSettings | None = None,
) -> Path:
    """Train (or continue) the grid, then write the results; returns the output folder.

    With ``report_only``, the grid in ``out`` is reported with the settings its ``grid.json``
    holds (never rewritten); a flag given that differs from them is refused."""
    settings = settings or EngineSettings()
    if seeds < 1 or settings.workers < 1 or settings.retries < 0:
        raise NmrlError("--seeds and --workers must be at least 1, --retries at least 0")
    if settings.engine not in ENGINES:
        raise NmrlError(f"unknown --engine {settings.engine!r}: choose {' or '.join(ENGINES)}")
    if report_only:
        return report_grid(base, methods, seeds, first_seed, envs, out)
    if settings.engine == "ray":
        from nmrl.train.engines import import_ray

        import_ray()  # one line, before anything is written, when Ray is not installed
    env_ids = parse_envs(envs, base.env, base.env_kwargs)
    method_list = parse_methods(methods)
    out = Path(out) if out is not None else default_out(base, env_ids)
    refuse_single_env_layout(out, env_ids)
    cells = build_grid(base, env_ids, method_list, seeds, first_seed, out)
    with _engine_session(settings, cells):  # Ray: connected (or refused) before anything is written
        out.mkdir(parents=True, exist_ok=True)
        grid_file = out / GRID_FILE
        grid = {
            "envs": env_ids,
            "methods": [m.name for m in method_list],
            "seeds": list(range(first_seed, first_seed + seeds)),
            "base_config": base.to_dict(),
        }
        atomic_write_text(grid_file, json.dumps(grid, indent=2) + "\n")
        run_grid(cells, grid_file, settings)
    write_reports(cells, env_ids, method_list, out, base)
    return out


def _engine_session(settings: EngineSettings, cells: Sequence[Cell]) -> contextlib.AbstractContextManager:
    if settings.engine != "ray":
        return contextlib.nullcontext()
    from nmrl.train.engines import ray_session

    return ray_session(settings.address, settings.workers * max(cell.config.threads for cell in cells))


def write_reports(
    cells: Sequence[Cell], env_ids: Sequence[str], methods: Sequence[Method], out: Path, base: SharedConfig
) -> None:
    """Per env results.md/.csv, curves.csv/.png, and the summary over envs, from the cells' runs."""
    per_env = {}
    for env in env_ids:
        per_env[env] = collect([c for c in cells if c.env == env], methods)
        folder = env_folder(out, env)
        folder.mkdir(parents=True, exist_ok=True)
        print(write_results(per_env[env], folder, env, base))
    summary = write_summary(per_env, out, base)
    if summary:
        print(summary)
    files = [env_folder(out, env) / name for env in env_ids for name in ("results.md", "curves.png")]
    print("results: " + ", ".join(str(f) for f in ([out / "summary.md"] if summary else []) + files))


# Settings that do not change what a grid's report says (how and where it was run).
NOT_REPORTED = frozenset({"threads", "progress", "device", "runs_dir"})


def report_grid(base: SharedConfig, methods: str, seeds: int, first_seed: int, envs: str, out: Path | None) -> Path:
    """``--report-only``: rebuild a grid's results from its runs, with the settings of its
    ``grid.json``; flags that differ from them are refused, as a resume refuses them."""
    named_envs = [part.strip() for part in envs.split(",") if part.strip()] or [base.env]
    out = Path(out) if out is not None else default_out(base, named_envs)
    if not out.is_dir():
        raise NmrlError(f"--report-only: {out} does not exist (no grid folder to report on)")
    grid = read_grid(out / GRID_FILE)
    defaults = SharedConfig().flat_settings()
    given = {key: value for key, value in base.flat_settings().items() if value != defaults[key]}
    saved = grid["base"].flat_settings()
    differ = [
        f"--{key.replace('_', '-')} {value} (the grid's: {saved[key]})"
        for key, value in given.items()
        if key not in NOT_REPORTED and value != saved[key] and not (key == "env" and envs)
    ]
    if methods != DEFAULT_METHODS and [m.name for m in parse_methods(methods)] != grid["methods"]:
        differ.append(f"--methods {methods} (the grid's: {','.join(grid['methods'])})")
    if envs and named_envs != grid["envs"]:
        differ.append(f"--envs {envs} (the grid's: {','.join(grid['envs'])})")
    wanted_seeds = list(range(first_seed, first_seed + seeds))
    if (seeds, first_seed) != (DEFAULT_SEEDS, DEFAULT_FIRST_SEED) and wanted_seeds != grid["seeds"]:
        differ.append(f"--seeds {seeds} --seed {first_seed} (the grid's: seeds {grid['seeds']})")
    if differ:
        raise NmrlError(
            f"--report-only: {out} was run with other settings: {'; '.join(differ)}; leave those flags out "
            "(the report uses the grid's own settings)"
        )
    method_list = parse_methods(",".join(grid["methods"]))
    cells = build_grid(grid["base"], grid["envs"], method_list, len(grid["seeds"]), grid["seeds"][0], out)
    write_reports(cells, grid["envs"], method_list, out, grid["base"])
    return out


def read_grid(path: Path) -> dict[str, Any]:
    """A grid's ``grid.json``: envs, methods, seeds and its base config, each checked (a grid folder
    may come from anyone: an env id there only names a folder, it is never imported)."""
    from nmrl.train.loop import check_run_name

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NmrlError(f"--report-only: {path} is missing (not a grid written by nmrl compare)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NmrlError(f"{path}: not a grid file ({getattr(error, 'strerror', None) or error})") from None
    try:
        envs, methods, seeds = data["envs"], data["methods"], data["seeds"]
        if not (
            envs and all(isinstance(e, str) for e in envs) and methods and all(isinstance(m, str) for m in methods)
        ):
            raise ValueError("envs and methods must be lists of names")
        if (
            not seeds
            or any(type(seed) is not int for seed in seeds)
            or seeds != list(range(seeds[0], seeds[0] + len(seeds)))
        ):
            raise ValueError("seeds must be consecutive integers")
        for env in envs:
            check_run_name(env)  # a folder of the grid: never a path out of it
        base = SharedConfig.from_dict(data["base_config"])
        parse_methods(",".join(methods))
    except (KeyError, TypeError, ValueError, NmrlError) as error:
        raise NmrlError(f"{path}: not a grid file ({gist(error, 1)})") from None
    return {"envs": envs, "methods": methods, "seeds": seeds, "base": base}


def compare(
    config: Annotated[SharedConfig, tyro.conf.arg(name="")],
    methods: str = DEFAULT_METHODS,
    seeds: int = DEFAULT_SEEDS,
    seed: int = DEFAULT_FIRST_SEED,
    envs: str = "",
    engine: Literal["local", "ray"] = "local",
    workers: int = 2,
    address: str = "",
    retries: int = 2,
    cell_gpus: float = 0.25,
    out: Path | None = None,
    report_only: bool = False,
) -> None:
    """Compare sparsity methods over envs x seeds: train every cell (local worker processes or a
    Ray cluster), then write per env a results table (markdown + CSV) and learning curves (PNG)
    with a 95% confidence band, and a summary of the return normalised by dense over all envs
    (IQM with a stratified-bootstrap CI). Running the command again skips finished cells and
    resumes interrupted ones.

    Args:
        config: Training settings shared by every cell (each method sets the sparsity, and the
            topology, optimizer or activation it needs; each cell sets its seed and run name).
        methods: Comma-separated: dense, N:M patterns (2:4, 1:4, 1:8), ss-F (static sparse), ds-F (SET:
            DS-TD3/DS-SAC), rigl-F, tows-F (SET + masked Adam + LeakyReLU); F = fraction of weights pruned.
        seeds: Seeds per method and env: --seed, --seed+1, ...
        seed: The first seed.
        envs: Comma-separated Gymnasium ids (Hopper-v5,HalfCheetah-v5); empty = the one --env.
        engine: local (worker processes on this machine) or ray (tasks on a Ray cluster: pip install 'nmrl[ray]').
        workers: Cells trained at once on the local engine (one torch thread each unless --threads is given);
            with --engine ray and no --address, the size of the Ray instance started on this machine.
        address: Ray cluster to run on (host:port of its head, or 'auto'); empty = RAY_ADDRESS, else a new
            instance on this machine.
        retries: Times a cell whose worker (or node) died is run again, resuming from its last checkpoint.
        cell_gpus: Ray: the GPU fraction each cell asks for with --device cuda (0.25: four cells per GPU).
        out: Output folder, on storage every Ray node reaches (default: <runs-dir>/compare__<envs>__<algo>).
        report_only: Only rebuild the tables and plots from the runs already in --out, with the grid's own
            settings (its grid.json); flags that differ from them are refused.
    """
    settings = EngineSettings(engine, workers, address, retries, cell_gpus)
    run_comparison(
        config, methods, seeds=seeds, first_seed=seed, envs=envs, out=out, report_only=report_only, settings=settings
    )
