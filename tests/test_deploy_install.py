"""The ``deploy`` extra alone, as a machine that only runs policies installs it.

nmrl is built as a wheel (from a copy of the sources) and installed with ``pip --no-deps`` into a
fresh virtual environment; beside it go exactly the distributions that the wheel's ``nmrl[deploy]``
requires, resolved from its own metadata, recursively, with their markers. They are linked from
this test's environment file by file (their installed file lists), which needs no network and keeps
the test to seconds; PyTorch, numba, matplotlib and tensorboard are not among them, and the test
checks that ``import torch`` fails there. In that environment ``nmrl inspect``, ``nmrl deploy eval``
and ``nmrl bench --backends ort`` run on an exported policy, bench writes its CSV and says in one
line why there is no plot, and ``nmrl train`` says in one line which extra it needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from deploy_support import TINY_RUN_GROUP, exported_run
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import nmrl

REPO = Path(__file__).resolve().parents[1]
LEFT_OUT = {"torch", "numba", "matplotlib", "tensorboard", "onnxscript"}
"""Distributions a deploy-only machine must not need."""


def build_wheel(out: Path) -> Path:
    """nmrl's wheel, built by this environment's setuptools from a copy of the sources (setuptools
    writes build/ and *.egg-info beside the sources it builds)."""
    source = out / "source"
    shutil.copytree(REPO / "nmrl", source / "nmrl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", *offline, "-w", str(out / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (out / "dist").glob("nmrl-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(name).decode().splitlines()
    return [Requirement(line.partition(":")[2].strip()) for line in lines if line.startswith("Requires-Dist:")]


def closure(requirements: list[Requirement], extras: set[str]) -> set[str]:
    """Canonical names of the distributions that ``requirements`` with ``extras`` pull in, followed
    through the installed distributions' own requirements (and the extras asked of them)."""
    found: set[str] = set()
    todo = [(requirements, extras | {""})]
    while todo:
        wanted, active = todo.pop()
        for requirement in wanted:
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**default_environment(), "extra": extra}) for extra in active
            ):
                continue
            name = canonicalize_name(requirement.name)
            if name == "nmrl":  # the extras' own references (nmrl[deploy,plots])
                todo.append((requirements, set(requirement.extras) | {""}))
                continue
            key = f"{name}[{','.join(sorted(requirement.extras))}]"
            if key in found:
                continue
            found |= {key, name}
            installed = [Requirement(r) for r in metadata.requires(requirement.name) or []]
            todo.append((installed, set(requirement.extras) | {""}))
    return {name for name in found if "[" not in name}


def link_distribution(name: str, site: Path) -> None:
    """Symlink every installed file of ``name`` (its RECORD) into ``site``."""
    dist = metadata.distribution(name)
    assert dist.files, f"{name} has no file list (not installed by pip?)"
    for file in dist.files:
        if file.parts[0] == "..":  # scripts in bin/: not needed by the verbs run here
            continue
        target = site / file
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(dist.locate_file(file)).resolve())


@pytest.fixture(scope="module")
def deploy_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], Path]:
    """(the venv's bin/, the distributions beside nmrl, the wheel)."""
    root = tmp_path_factory.mktemp("deploy_only")
    wheel = build_wheel(root)
    names = closure(wheel_requirements(wheel), {"deploy"})
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for name in sorted(names):
        link_distribution(name, site)
    into_venv = ["--python", str(venv / "bin" / "python"), "install", "-q"]  # pip from here, installing there
    subprocess.run(
        [sys.executable, "-m", "pip", *into_venv, "--no-deps", "--no-index", "--no-compile", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return venv / "bin", names, wheel


def test_the_wheel_keeps_torch_out_of_the_core_and_the_deploy_extra(deploy_env):
    _, names, wheel = deploy_env
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    assert {"nmrl/cli.py", "nmrl/deploy/ort_backend.py", "nmrl/policy_file.py"} <= files
    assert not any(name.startswith("tests/") for name in files)
    assert wheel.name.startswith(f"nmrl-{nmrl.__version__}-")  # the version is written once, in nmrl/__init__.py
    assert names >= {"numpy", "onnx", "onnxruntime", "gymnasium", "mujoco", "rich", "tyro"}
    assert not names & LEFT_OUT, names & LEFT_OUT
    train = closure(wheel_requirements(wheel), {"train"})
    assert train >= LEFT_OUT | names  # the train extra brings everything back


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "MUJOCO_GL": "disable", "OMP_NUM_THREADS": "1"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_deploy_only_install_runs_policies_and_names_the_missing_extras(deploy_env, tmp_path, tmp_path_factory):
    bin_dir, _, _ = deploy_env
    model = tmp_path / "actor.onnx"
    shutil.copy(exported_run(tmp_path_factory) / "actor.onnx", model)

    missing = run(bin_dir, tmp_path, "python", "-c", "import torch")
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr

    inspected = run(bin_dir, tmp_path, "nmrl", "inspect", str(model))
    assert inspected.returncode == 0, inspected.stderr
    assert "2:4" in inspected.stdout

    evaluated = run(bin_dir, tmp_path, "nmrl", "deploy", "eval", str(model), "--episodes", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "on ONNX Runtime CPU" in evaluated.stdout and "Hopper-v5" in evaluated.stdout

    bench = run(
        bin_dir,
        tmp_path,
        *("nmrl", "bench", str(model), "--backends", "ort", "--batch", "1", "--warmup", "2", "--calls", "20"),
        *("--out", "bench"),
    )
    assert bench.returncode == 0, bench.stderr
    assert (tmp_path / "bench" / "bench.csv").is_file() and not (tmp_path / "bench" / "bench.png").exists()
    assert "bench.png not drawn: the Python module 'matplotlib' is not installed: pip install 'nmrl[plots]'" in (
        " ".join(bench.stdout.split())
    )

    train = run(bin_dir, tmp_path, "nmrl", "train", "--env", "Hopper-v5", "--total-steps", "100")
    assert train.returncode == 1
    assert len(train.stderr.strip().splitlines()) == 1, train.stderr
    assert train.stderr.startswith(
        "nmrl train: error: the Python module 'torch' is not installed: pip install 'nmrl[train]'"
    )
    assert "https://download.pytorch.org/whl/cpu" in train.stderr
    assert not (tmp_path / "runs").exists()
