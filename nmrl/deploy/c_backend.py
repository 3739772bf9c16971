"""The ``c`` backend: a policy file compiled to C (:mod:`nmrl.export.c_source`) and run as a shared library.

Building is an explicit step, as for TensorRT: :func:`build_c_library` (``nmrl deploy build
actor.onnx --backend c``) writes ``actor.c``/``actor.h`` and ``actor.so`` beside the ONNX file with the
system C compiler (``$CC``, else ``cc``); :func:`load_c_policy` loads the library with ctypes and
refuses one that is missing or older than its ONNX file. The generated C has no dependencies
beyond libm, so the library is what a C program would link.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError
from nmrl.files import atomic_write_bytes

DEFAULT_FLAGS = ("-O3", "-march=native")
"""Host build: the compiler picks the SIMD path (AVX-512, AVX2+FMA, NEON) this CPU has."""
WARNINGS = ("-std=c99", "-Wall", "-Werror")
"""The generated file compiles clean under these."""


def find_compiler(cc: str | None = None) -> str:
    """The C compiler to use (``cc``, else ``$CC``, else ``cc``); one line naming what to install
    when there is none."""
    name = cc or os.environ.get("CC") or "cc"
    found = shutil.which(shlex.split(name)[0]) if name.strip() else None
    if found is None:
        raise NmrlError(f"no C compiler {name!r} found: install one (Debian: apt-get install gcc) or set CC")
    return name


def compile_c(
    sources: list[Path],
    output: Path,
    flags: tuple[str, ...] = DEFAULT_FLAGS,
    cc: str | None = None,
    shared: bool = True,
) -> Path:
    """Compile ``sources`` into ``output`` (a shared library, or a program when not ``shared``)
    atomically; a compiler error is one line (its first error) with the command."""
    compiler = find_compiler(cc)
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="nmrl-cc-") as scratch:
        built = Path(scratch) / output.name
        command = [
            *shlex.split(compiler),
            *WARNINGS,
            *flags,
            *(("-shared", "-fPIC") if shared else ()),
            *(str(source) for source in sources),
            "-o",
            str(built),
            "-lm",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in (result.stderr or result.stdout).splitlines() if "error" in line]
            first = lines[0] if lines else (result.stderr or result.stdout or "no output").strip().splitlines()[-1]
            raise NmrlError(f"the C compiler failed ({' '.join(command[:1])}): {first.strip()}")
        atomic_write_bytes(output, built.read_bytes())
    if not shared:
        output.chmod(0o755)
    return output


def c_unavailable_reason() -> str | None:
    """Why the ``c`` backend cannot run here (no C compiler), or None."""
    try:
        find_compiler()
    except NmrlError as error:
        return str(error)
    return None


def library_path(onnx_path: Path) -> Path:
    """Where :func:`build_c_library` writes the library of ``onnx_path`` (``actor.onnx`` -> ``actor.so``)."""
    return Path(onnx_path).with_suffix(".so")


def build_c_library(
    onnx: Path,
    output: Path | None = None,
    flags: tuple[str, ...] = DEFAULT_FLAGS,
    cc: str | None = None,
    kernels: str = "auto",
) -> Path:
    """Generate ``<stem>.c``/``<stem>.h`` from the policy file ``onnx`` and compile ``<stem>.so``."""
    from nmrl.export.c_source import generate_c_file

    onnx = Path(onnx)
    output = Path(output) if output is not None else library_path(onnx)
    source = generate_c_file(onnx, kernels=kernels)
    c_path, _ = source.write(output.with_suffix(".c"))
    return compile_c([c_path], output, flags, cc)


class CPolicy(Policy):
    """A compiled policy library (``<prefix>_act_batch``) called through ctypes."""

    backend = "c"

    def __init__(
        self, library: Path, obs_dim: int, act_dim: int, prefix: str = "nmrl_policy", env_id: str | None = None
    ) -> None:
        self.library = Path(library)
        self.obs_dim, self.act_dim, self.env_id = obs_dim, act_dim, env_id
        # dlopen caches by path: a copy under a fresh name loads what is on disk now.
        self._scratch = tempfile.TemporaryDirectory(prefix="nmrl-c-")
        private = Path(self._scratch.name) / self.library.name
        shutil.copyfile(self.library, private)
        try:
            self._lib = ctypes.CDLL(str(private))
            self._act = getattr(self._lib, f"{prefix}_act_batch")
        except (OSError, AttributeError) as error:
            raise NmrlError(f"{library}: not a policy library with {prefix}_act_batch ({error})") from None
        self._act.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self._act.restype = None

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        actions = np.empty((obs.shape[0], self.act_dim), np.float32)
        self._act(obs.shape[0], obs.ctypes.data, actions.ctypes.data)
        return actions

    def describe(self) -> str:
        return f"c ({self.library.name}, 1 thread)"

    def close(self) -> None:
        self._scratch.cleanup()


def load_c_policy(path: Path) -> CPolicy:
    """The policy of an ONNX file whose library :func:`build_c_library` built (``actor.so`` beside
    ``actor.onnx``); refuses a missing or stale library in one line naming the build command."""
    from nmrl.export.verify import inspect_model, load_onnx
    from nmrl.policy_file import read_claims

    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such file")
    library = library_path(path)
    if not library.is_file() or library.stat().st_mtime < path.stat().st_mtime:
        state = "missing" if not library.is_file() else "older than the ONNX file"
        raise NmrlError(f"{library} is {state}: run nmrl deploy build {path} --backend c")
    claims = read_claims(inspect_model(load_onnx(path)).metadata, str(path))
    if claims.obs_dim is None or claims.act_dim is None:
        raise NmrlError(f"{path}: not an nmrl policy file (no nmrl.obs_dim/act_dim)")
    return CPolicy(library, claims.obs_dim, claims.act_dim, env_id=claims.env_id)
