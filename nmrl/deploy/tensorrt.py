"""TensorRT engines from exported actors: builder (loader) and ``TensorRTPolicy`` (runner).

Two flavours share this code because their Python APIs agree on everything used here:

* ``tensorrt`` — standard TensorRT 10/11 for data-centre GPUs, Hopper and Jetson. Building needs
  the GPU the engine will run on. TensorRT 10 takes the fp32 ONNX with the FP16 builder flag;
  TensorRT 11 is strongly typed only, so the precision comes from the graph (the fp16 export).
* ``tensorrt-rtx`` — TensorRT for RTX (PyPI ``tensorrt-rtx-cu13``, module
  ``tensorrt_rtx_bindings``). Strongly typed; builds ahead of time on a machine without a GPU
  for compute capability 8.0/8.6/8.9/12.x (no Hopper, no Orin) and picks kernels just in time on
  the target GPU, so its build log cannot say which layers will run sparse kernels.

Sparse tensor cores need reduced precision and weights that are 2:4 along K. The builder times
sparse and dense tactics and keeps the faster, so "eligible" is not "picked": the report written
next to each engine keeps the two apart, as the builder logged them, next to nmrl's own reading of
the ONNX weights. Polygraphy is not used for building because it picks TensorRT or TensorRT-RTX
once per process (an environment variable read at import) and routes the builder log to its
global logger; nmrl needs both flavours in one process and the log lines themselves.

Everything imports TensorRT lazily: without it (or without a GPU) the error is one line.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from nmrl.deploy.onnx_gemms import OnnxGraphInfo, read_graph_info
from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError
from nmrl.files import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its module, how to get it, where its engines run."""

    name: str
    module: str
    install_hint: str
    builds_without_gpu: bool
    plan_suffix: str


FLAVOURS: dict[str, Flavour] = {
    "tensorrt": Flavour(
        "tensorrt",
        "tensorrt",
        "pip install tensorrt-cu12, use docker/Dockerfile.gpu, or JetPack on Jetson; "
        "building needs the NVIDIA GPU the engine will run on",
        builds_without_gpu=False,
        plan_suffix=".plan",
    ),
    "tensorrt-rtx": Flavour(
        "tensorrt-rtx",
        "tensorrt_rtx_bindings",
        "pip install tensorrt-rtx-cu13",
        builds_without_gpu=True,
        plan_suffix=".rtx.plan",
    ),
}

# TensorRT-RTX compute capability targets by "major.minor".
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}


def import_tensorrt(flavour: str) -> ModuleType:
    """The TensorRT module of ``flavour``, or one clear NmrlError saying what is missing."""
    if flavour not in FLAVOURS:
        raise NmrlError(f"unknown TensorRT backend {flavour!r}; choose from {', '.join(FLAVOURS)}")
    spec = FLAVOURS[flavour]
    try:
        return importlib.import_module(spec.module)
    except ImportError as error:
        raise NmrlError(
            f"{flavour}: Python module {spec.module!r} is not installed here ({spec.install_hint})"
        ) from error
    except OSError as error:  # the bindings import but a shared library (CUDA, nvinfer) is missing
        raise NmrlError(f"{flavour}: {spec.module!r} is installed but cannot load: {error}") from error


def major_version(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as error:
        raise NmrlError(f"cannot read a TensorRT version from {version!r}") from error


@dataclass(frozen=True)
class BuildSettings:
    """The version-dependent builder settings for one ONNX graph."""

    flavour: str
    version: str
    strongly_typed: bool  # precision comes from the graph's own dtypes
    fp16_flag: bool  # BuilderFlag.FP16 (TensorRT 10 weakly typed networks only)
    sparse_weights: bool  # BuilderFlag.SPARSE_WEIGHTS
    sparse_possible: bool  # the GEMMs will run in a precision that has sparse kernels
    note: str = ""


def build_settings(flavour: str, version: str, graph_dtype: str, sparse: bool) -> BuildSettings:
    """Decide the builder settings from the TensorRT flavour/version and the ONNX graph's dtype.

    * TensorRT 10 + fp32 graph: weakly typed network with the FP16 flag (TensorRT picks fp16 kernels).
    * TensorRT 10 + fp16/bf16 graph: strongly typed network, no precision flag.
    * TensorRT 11 and TensorRT-RTX: always strongly typed, no precision flags exist. An fp32 graph
      builds but runs fp32 kernels, which have no sparse form: the note says to export fp16.
    * An int8 Q/DQ graph (weights int8 behind DequantizeLinear) is explicitly quantized: strongly typed,
      its GEMMs are int8, which has sparse kernels.
    """
    reduced = graph_dtype in ("float16", "bfloat16", "int8")
    if flavour == "tensorrt":
        major = major_version(version)
        if major < 10:
            raise NmrlError(f"TensorRT {version} is too old: nmrl builds with TensorRT 10 or newer")
        strongly_typed = major >= 11 or reduced
    else:
        strongly_typed = True
    fp16_flag = not strongly_typed
    sparse_possible = fp16_flag or reduced
    note = ""
    if sparse and not sparse_possible:
        note = (
            f"{flavour} {version} is strongly typed and this graph is {graph_dtype}: its GEMMs run fp32 "
            "kernels, which have no 2:4 sparse form; build the fp16 export (nmrl export --dtype fp16) "
            "to use sparse tensor cores"
        )
    return BuildSettings(flavour, version, strongly_typed, fp16_flag, sparse, sparse_possible, note)


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic-batch optimisation profile: smallest, tuned-for and largest batch."""

    min: int = 1
    opt: int = 64
    max: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise NmrlError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


_ELIGIBLE_RE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)$")
_PICKED_RE = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)$")


def _layer_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(", ") if name.strip()]


def parse_sparsity_log(lines: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    """(eligible, picked) layer names from TensorRT's builder log; None where it printed no such
    line (TensorRT prints both lines, possibly empty, whenever SPARSE_WEIGHTS was set)."""
    eligible = picked = None
    for line in lines:
        if match := _ELIGIBLE_RE.search(line):
            eligible = _layer_list(match.group(1))
        elif match := _PICKED_RE.search(line):
            picked = _layer_list(match.group(1))
    return eligible, picked


def _capturing_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps every message (VERBOSE and up) as ``SEVERITY: text``."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            self.lines.append(f"{getattr(severity, 'name', severity)}: {msg}")

        def errors(self) -> list[str]:
            return [line for line in self.lines if line.startswith(("ERROR", "INTERNAL_ERROR"))]

    return CapturingLogger()


@dataclass
class BuiltPlan:
    """One serialized engine and what the builder said while making it."""

    plan: bytes
    log: list[str]
    flags: dict[str, bool]


def _compute_capabilities(trt: ModuleType, targets: Sequence[str]) -> list[Any]:
    chosen = []
    for target in targets:
        if target not in RTX_TARGETS or not hasattr(trt.ComputeCapability, RTX_TARGETS[target]):
            raise NmrlError(
                f"TensorRT-RTX has no compute capability {target} target (it has {', '.join(RTX_TARGETS)}); "
                "Hopper (9.0) and Jetson Orin (8.7) need --backend tensorrt"
            )
        chosen.append(getattr(trt.ComputeCapability, RTX_TARGETS[target]))
    return chosen


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    info: OnnxGraphInfo,
    settings: BuildSettings,
    profile: BatchProfile,
    compute_capabilities: Sequence[str] = (),
    workspace_mib: int | None = None,
) -> BuiltPlan:
    """Parse ``onnx_path`` and build one serialized engine with ``settings``."""
    logger = _capturing_logger(trt)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as error:
        builder = None
        logger.lines.append(f"ERROR: {error}")
    if builder is None:
        last = (logger.errors() or ["no message"])[-1]
        raise NmrlError(f"{settings.flavour} could not start a builder (is there a usable NVIDIA GPU?): {last}")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise NmrlError(f"{settings.flavour}'s ONNX parser rejected {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if settings.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    # DETAILED keeps per-layer tactic names in the engine for the engine inspector.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if compute_capabilities:
        targets = _compute_capabilities(trt, compute_capabilities)
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(target, index)
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(
        info.input_name,
        (profile.min, info.input_dim),
        (profile.opt, info.input_dim),
        (profile.max, info.input_dim),
    )
    config.add_optimization_profile(optimization_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(logger.errors()) or "no error message"
        raise NmrlError(f"{settings.flavour}'s builder failed on {onnx_path}: {errors}")
    flag_names = ["SPARSE_WEIGHTS", "FP16"]
    read_back = {
        name: bool(config.get_flag(getattr(trt.BuilderFlag, name)))
        for name in flag_names
        if hasattr(trt.BuilderFlag, name)
    }
    read_back["STRONGLY_TYPED"] = bool(flags)
    return BuiltPlan(bytes(serialized), logger.lines, read_back)


def classify_inspector_layers(layers: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(layers whose tactic names a sparse kernel, fused layers the inspector cannot see into),
    from the engine inspector's JSON ``Layers`` list.

    A fused Myelin region (``LayerType`` Myelin, a ``{ForeignNode[...]}`` name) is one opaque entry:
    its tactic name says nothing about the GEMM kernels inside, which may well be sparse. Counting
    it as dense would misreport exactly the layers TensorRT fuses most (GEMM + activation chains).
    """
    sparse, opaque = [], []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        name, tactic = str(layer.get("Name", "?")), str(layer.get("TacticName", ""))
        if str(layer.get("LayerType", "")).lower() == "myelin" or "ForeignNode" in name or "myelin" in tactic.lower():
            opaque.append(name)
        elif "sparse" in tactic.lower():
            sparse.append(name)
    return sparse, opaque


def inspect_engine_layers(trt: ModuleType, plan: bytes) -> tuple[list[str], list[str]] | None:
    """:func:`classify_inspector_layers` of an engine; None where the engine cannot be loaded here
    (no GPU) or the inspector gives no layer list."""
    logger = _capturing_logger(trt)
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            return None
        inspector = engine.create_engine_inspector()
        layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # the inspector is a cross-check; failing it must not fail the build
        return None
    return classify_inspector_layers(layers.get("Layers", []))


def sparse_kernels_verdict(picked: list[str] | None, inspected: tuple[list[str], list[str]] | None) -> str:
    """Which layers run sparse kernels, which source says so, and why that source is trusted."""
    if picked is None:
        verdict = (
            "unknown: this builder does not log which layers it picked sparse kernels for "
            "(TensorRT-RTX chooses kernels on the target GPU at run time)"
        )
    else:
        listed = ", ".join(picked) if picked else "none"
        verdict = (
            f"{listed} (trusted: the builder log's 'picked sparse implementation' list, written as TensorRT "
            "chooses each layer's kernel, fused layers included)"
        )
    if inspected is not None:
        sparse, opaque = inspected
        verdict += f"; engine inspector cross-check: sparse tactic names in {', '.join(sparse) or 'none'}"
        if opaque:
            verdict += (
                f", {len(opaque)} fused (Myelin) layer(s) whose kernels it cannot show, so it cannot "
                "say dense or sparse for them"
            )
    return verdict


@dataclass
class BuildReport:
    """What ``build_engines`` made, saved as JSON next to the engine."""

    flavour: str
    version: str
    onnx: str
    plan: str
    dense_plan: str | None
    profile: dict[str, int]
    settings: dict[str, Any]
    flags: dict[str, bool]
    onnx_gemms: list[dict[str, Any]]
    builder_eligible: list[str] | None
    builder_picked: list[str] | None
    inspector_sparse_tactics: list[str] | None
    notes: list[str] = field(default_factory=list)
    inspector_fused_layers: list[str] | None = None  # Myelin regions the inspector cannot see into
    sparse_kernels: str = ""  # the verdict: which layers run sparse kernels, and whose word it is
    env_id: str | None = None  # from the ONNX metadata (nmrl.env_id), for deploy eval

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BuildReport:
        return cls(**json.loads(path.read_text()))

    def format(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [
            f"{self.flavour} {self.version}: {self.plan}"
            + (f"  (dense twin: {self.dense_plan})" if self.dense_plan else ""),
            f"  flags: {', '.join(k for k, v in self.flags.items() if v) or 'none'};  "
            f"batch profile {self.profile['min']}/{self.profile['opt']}/{self.profile['max']}",
            "  weight matrices in the ONNX (K x N, 2:4 along K?):",
        ]
        for gemm in self.onnx_gemms:
            fits = "2:4" if gemm["fits_2of4"] else "no"
            lines.append(
                f"    {gemm['node']:<28} {gemm['k']:>6} x {gemm['n']:<6} {gemm['dtype']:<8} "
                f"density {gemm['density']:.3f}  {fits}"
            )

        def show(names: list[str] | None, missing: str) -> str:
            if names is None:
                return missing
            return ", ".join(names) if names else "none"

        lines.append(
            "  builder: eligible for sparse math: " + show(self.builder_eligible, "not reported by this builder")
        )
        lines.append(
            "  builder: picked sparse kernels for: " + show(self.builder_picked, "not reported by this builder")
        )
        if self.sparse_kernels:
            lines.append("  sparse kernels run in: " + self.sparse_kernels)
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def default_plan_path(onnx_path: Path, flavour: str) -> Path:
    """``runs/x/actor.onnx`` -> ``runs/x/actor.plan`` (``actor.rtx.plan`` for TensorRT-RTX)."""
    return onnx_path.with_suffix(FLAVOURS[flavour].plan_suffix)


def dense_twin_path(plan_path: Path) -> Path:
    """``actor.plan`` -> ``actor.dense.plan``; ``actor.rtx.plan`` -> ``actor.rtx.dense.plan``."""
    return plan_path.with_name(plan_path.name.removesuffix(".plan") + ".dense.plan")


def report_path(plan_path: Path) -> Path:
    """The JSON report beside an engine: ``actor.plan`` -> ``actor.plan.json``."""
    return plan_path.with_name(plan_path.name + ".json")


def build_engines(
    onnx_path: Path,
    flavour: str = "tensorrt",
    output: Path | None = None,
    sparse: bool = True,
    dense_twin: bool = True,
    profile: BatchProfile | None = None,
    compute_capabilities: Sequence[str] = (),
    workspace_mib: int | None = None,
) -> BuildReport:
    """Build the engine for ``onnx_path`` (with SPARSE_WEIGHTS unless ``sparse=False``) and its
    dense twin; write both, the builder log and the JSON report; return the report."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise NmrlError(f"{onnx_path}: no such ONNX file")
    trt = import_tensorrt(flavour)
    if compute_capabilities and flavour != "tensorrt-rtx":
        raise NmrlError(
            "compute capability targets are a TensorRT-RTX option; standard TensorRT builds for the GPU it runs on"
        )
    info = read_graph_info(onnx_path)
    profile = profile or BatchProfile()
    settings = build_settings(flavour, trt.__version__, info.compute_dtype, sparse)
    plan_path = Path(output) if output else default_plan_path(onnx_path, flavour)
    plan_path.parent.mkdir(parents=True, exist_ok=True)

    built = build_plan(trt, onnx_path, info, settings, profile, compute_capabilities, workspace_mib)
    atomic_write_bytes(plan_path, built.plan)  # loaders rebuild only missing/stale plans
    plan_path.with_name(plan_path.name + ".log").write_text("\n".join(built.log) + "\n")
    eligible, picked = parse_sparsity_log(built.log)

    twin_path = None
    if dense_twin:
        dense_settings = build_settings(flavour, trt.__version__, info.compute_dtype, sparse=False)
        twin = build_plan(trt, onnx_path, info, dense_settings, profile, compute_capabilities, workspace_mib)
        twin_path = dense_twin_path(plan_path)
        atomic_write_bytes(twin_path, twin.plan)

    notes = [settings.note] if settings.note else []
    if sparse and not any(gemm.fits_2of4 for gemm in info.gemms):
        notes.append("no weight matrix in this ONNX is 2:4 along K: the sparse flag has nothing to use")
    if flavour == "tensorrt-rtx":
        notes.append(
            "TensorRT-RTX chooses kernels just in time on the target GPU; its ahead-of-time build log "
            "does not say which layers will run sparse kernels"
        )
    elif sparse and eligible is not None and picked is not None and set(eligible) - set(picked):
        notes.append(
            "TensorRT timed sparse and dense kernels and kept dense where it was faster "
            "(usual below ~256 channels or at small batch)"
        )
    inspected = inspect_engine_layers(trt, built.plan) if not FLAVOURS[flavour].builds_without_gpu else None
    report = BuildReport(
        flavour=flavour,
        version=trt.__version__,
        onnx=str(onnx_path),
        plan=str(plan_path),
        dense_plan=str(twin_path) if twin_path else None,
        profile=asdict(profile),
        settings=asdict(settings),
        flags=built.flags,
        onnx_gemms=[gemm.to_dict() for gemm in info.gemms],
        builder_eligible=eligible,
        builder_picked=picked,
        inspector_sparse_tactics=None if inspected is None else inspected[0],
        notes=notes,
        inspector_fused_layers=None if inspected is None else inspected[1],
        sparse_kernels=sparse_kernels_verdict(picked, inspected) if sparse else "none (built without SPARSE_WEIGHTS)",
        env_id=info.metadata.get("nmrl.env_id"),
    )
    report.save(report_path(plan_path))
    return report


def _report_field(plan_path: Path, key: str) -> Any:
    """One field of the build report beside an engine (or its sparse sibling, for a dense twin)."""
    candidates = [plan_path, plan_path.with_name(plan_path.name.replace(".dense.plan", ".plan"))]
    for candidate in candidates:
        report = report_path(candidate)
        if report.is_file():
            try:
                return json.loads(report.read_text()).get(key)
            except ValueError:
                return None
    return None


def engine_flavour(plan_path: Path) -> str:
    """The flavour recorded in the engine's report, else guessed from its name."""
    recorded = _report_field(plan_path, "flavour")
    if recorded in FLAVOURS:
        return str(recorded)
    twin_of = plan_path.name.replace(".dense.plan", ".plan")
    return "tensorrt-rtx" if twin_of.endswith(".rtx.plan") else "tensorrt"


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA device can run an engine here (None when one can), asked of libcudart through
    Polygraphy's ctypes wrapper so that it needs no PyTorch."""
    try:
        from polygraphy import cuda

        handle = cuda.wrapper().handle
    except Exception as error:  # Polygraphy raises its own exception type when libcudart is absent
        return f"the CUDA runtime library cannot be loaded ({error.__class__.__name__})"
    count = ctypes.c_int(0)
    status = handle.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        reasons = {35: "the NVIDIA driver is missing or older than the CUDA runtime", 100: "no CUDA device"}
        return f"no usable CUDA device ({reasons.get(status, f'cudaGetDeviceCount error {status}')})"
    return None if count.value > 0 else "no CUDA device"


def _unavailable_reason(flavour: str) -> str | None:
    try:
        import_tensorrt(flavour)
    except NmrlError as error:
        return str(error)
    return cuda_unavailable_reason()


def tensorrt_unavailable_reason() -> str | None:
    """Backend probe for ``tensorrt``: None when TensorRT imports and a CUDA GPU is visible."""
    return _unavailable_reason("tensorrt")


def tensorrt_rtx_unavailable_reason() -> str | None:
    """Backend probe for ``tensorrt-rtx`` (running its engines needs an RTX-class GPU)."""
    return _unavailable_reason("tensorrt-rtx")


class TensorRTPolicy(Policy):
    """Runs a TensorRT (or TensorRT-RTX) engine as a policy: ``act(obs[batch, obs_dim]) -> actions``.

    The same interface as every deploy backend (``obs_dim``, ``act_dim``, ``act``). Device buffers
    and the CUDA stream come from Polygraphy's CUDA wrapper (ctypes over libcudart), so running an
    engine needs no PyTorch: this is what the Jetson image uses.
    """

    def __init__(self, plan_path: Path | str, flavour: str | None = None) -> None:
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise NmrlError(f"{plan_path}: no such engine file")
        self.flavour = flavour or engine_flavour(plan_path)
        trt = import_tensorrt(self.flavour)
        self._trt = trt
        self._logger = _capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            last = (self._logger.errors() or ["no message"])[-1]
            raise NmrlError(
                f"{plan_path}: {self.flavour} could not load the engine (needs a compatible "
                f"NVIDIA GPU and driver): {last}"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NmrlError(f"{plan_path}: expected one input and one output, found {inputs} -> {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        self.obs_dim = int(self._engine.get_tensor_shape(self._input)[-1])
        self.act_dim = int(self._engine.get_tensor_shape(self._output)[-1])
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._output_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        min_shape, _, max_shape = self._engine.get_tensor_profile_shape(self._input, 0)
        self.batch_range = (int(min_shape[0]), int(max_shape[0]))
        self._context = self._engine.create_execution_context()
        self.backend = self.flavour
        self.plan_path = plan_path
        self.env_id: str | None = _report_field(plan_path, "env_id")

        from polygraphy import cuda
        from polygraphy.datatype import DataType

        self._stream = cuda.Stream()
        self._device_in = cuda.DeviceArray(shape=(1, self.obs_dim), dtype=DataType.from_dtype(self._input_dtype))
        self._device_out = cuda.DeviceArray(shape=(1, self.act_dim), dtype=DataType.from_dtype(self._output_dtype))

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        """Actions for a float32 batch [rows, obs_dim] (``Policy.act`` checks shapes and dtypes)."""
        batch = np.ascontiguousarray(obs, dtype=self._input_dtype)
        rows = batch.shape[0]
        if not self.batch_range[0] <= rows <= self.batch_range[1]:
            raise NmrlError(
                f"batch {rows} is outside the engine's profile {self.batch_range}; rebuild with --min-batch/--max-batch"
            )
        self._device_in.resize(batch.shape)
        self._device_out.resize((rows, self.act_dim))
        self._device_in.copy_from(batch, self._stream)
        self._context.set_input_shape(self._input, batch.shape)
        self._context.set_tensor_address(self._input, self._device_in.ptr)
        self._context.set_tensor_address(self._output, self._device_out.ptr)
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"TensorRT execution failed: {self._logger.errors()[-1:]}")
        actions = np.empty((rows, self.act_dim), dtype=self._output_dtype)
        self._device_out.copy_to(actions, self._stream)
        self._stream.synchronize()
        return actions.astype(np.float32, copy=False)

    def describe(self) -> str:
        """One line: engine, flavour and version, input precision, batch range."""
        version = self._trt.__version__
        low, high = self.batch_range
        return f"{self.flavour} {version}, {self.plan_path.name}, {self._input_dtype} input, batch {low}-{high}"

    def close(self) -> None:
        """Free the device buffers, the stream and the engine."""
        for name in ("_device_in", "_device_out", "_stream"):
            resource = self.__dict__.pop(name, None)
            if resource is not None:
                resource.free()
        self._context = self._engine = None


def _engine_for(path: Path, flavour: str, dense: bool, **build_options: Any) -> Path:
    """The engine to run for ``path``: a .plan as given, or for an ONNX file the engine beside it,
    built first when it is missing or older than the ONNX."""
    if path.suffix != ".onnx":
        return dense_twin_path(path) if dense and not path.name.endswith(".dense.plan") else path
    plan = default_plan_path(path, flavour)
    wanted = dense_twin_path(plan) if dense else plan
    if not wanted.is_file() or wanted.stat().st_mtime < path.stat().st_mtime:
        # Build only what is asked for: engine builds on a GPU take seconds to minutes.
        build_engines(path, flavour, output=plan, dense_twin=dense, **build_options)
    return wanted


def load_tensorrt_policy(
    path: Path | str,
    flavour: str | None = None,
    dense: bool = False,
    max_batch: int | None = None,
    **_common: Any,
) -> TensorRTPolicy:
    """Backend loader for the deploy registry. ``path`` is an engine (``actor.plan``) or an
    exported ONNX (its engine is built beside it when missing or older than the ONNX).
    ``dense=True`` runs the dense twin engine; ``flavour`` picks TensorRT or TensorRT-RTX;
    ``max_batch`` sizes the profile of an engine built here. Settings meant for other backends
    (``threads``) are ignored."""
    path = Path(path)
    flavour = flavour or ("tensorrt" if path.suffix == ".onnx" else engine_flavour(path))
    build = {}
    if max_batch is not None:
        build["profile"] = BatchProfile(min=1, opt=min(BatchProfile.opt, max_batch), max=max_batch)
    return TensorRTPolicy(_engine_for(path, flavour, dense, **build), flavour=flavour)


def load_tensorrt_rtx_policy(path: Path | str, **options: Any) -> TensorRTPolicy:
    """Backend loader for ``tensorrt-rtx``: as :func:`load_tensorrt_policy` with TensorRT-RTX."""
    options.pop("flavour", None)
    return load_tensorrt_policy(path, flavour="tensorrt-rtx", **options)
