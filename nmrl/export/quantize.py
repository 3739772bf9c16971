"""int8 Q/DQ policies: ONNX Runtime's static quantizer, calibrated on the agent's own observations.

The quantizer is ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear /
DequantizeLinear pairs around fp32 ops). Two recipes (:data:`RECIPES`), one per runtime, because
the runtimes turn Q/DQ graphs into integer kernels under different rules:

``ort`` (the embedded default: ONNX Runtime on a CPU). ONNX Runtime fuses ``DQ -> Gemm -> Q`` into
an integer ``QGemm`` only when the Gemm's output is quantized too; its x86 fast path multiplies
unsigned 8-bit activations by signed 8-bit weights.

- the FIRST layer stays fp32: the observations are never quantized. Its K is the observation width
  (11-27 for MuJoCo tasks), so it holds a few percent of the actor's multiply-adds at width 256 and
  under 1% at 1024, and an integer kernel buys nothing there: on a CPU every integer layer pays a
  fixed cost (its input quantized, its output requantized; ~36 µs for the 17-input layer at batch 256,
  width 256, where fp32 takes 28 µs). Measured against quantizing it as well (with the input
  equalization :func:`equalize_input` that the ``tensorrt`` recipe needs): mean on-policy error 0.019
  vs 0.027 of the action range on a 90k-step HalfCheetah 2:4 policy (p99 0.12 vs 0.20), 0.030 vs
  0.048 on a 53k-step Hopper one, and 2.6x vs 2.5x fp32's speed at batch 256, width 256;
- the other Gemm outputs quantized, as unsigned int8 with a zero point (asymmetric). Each hidden Gemm
  is followed by ReLU, so the quantizer folds the ReLU into the output quantization (a ``[0, max]``
  range clamps negatives to 0, exactly ReLU) and all 256 levels cover values that occur, twice the
  resolution of a signed symmetric range of the same tensor;
- the LAST Gemm's output (the pre-tanh action) is quantized on its calibrated range clipped to
  ``[-PRE_TANH_RANGE, PRE_TANH_RANGE]``: tanh(3) = 0.995, so clipping there moves an action by at
  most 0.25% of its range, while a trained policy's saturated actions (pre-tanh values of 10 or
  more) would otherwise spread the 256 levels so wide that the actions that are not saturated
  lose most of their resolution (measured on a trained HalfCheetah policy: p99 error 0.175 of the
  range on the full calibrated range, 0.089 clipped, the same as keeping that output fp32). With
  every output quantized ONNX Runtime runs the layers after the first as integer QGemm kernels;
- weights signed int8, symmetric, per output channel, in the 7-bit range (``reduce_range``). x86
  CPUs without VNNI (AVX2, e.g. the AMD EPYC this was measured on) multiply u8 x s8 pairs with
  ``vpmaddubsw``, which saturates the int16 sum of two products (2 x 255 x 127 > 32767): with full
  8-bit weights the fused kernel's actions were off by up to 0.99 of the action range on a trained
  HalfCheetah policy while the same graph unfused was off by 0.08. 7-bit weights cannot saturate
  (2 x 255 x 64 = 32640), cost one bit of weight resolution, and are what ONNX Runtime advises for
  such CPUs; the file then runs correctly on any CPU.

``tensorrt`` (the explicitly quantized form TensorRT builds sparse int8 kernels from). Its settings
are the ones TensorRT accepts:

- activations signed int8, symmetric (zero point 0): TensorRT rejects UINT8 DequantizeLinear inputs;
- Gemm outputs not quantized (int8 in, fp32 out; each hidden activation is quantized once, at the
  next layer's input); ONNX Runtime runs such a graph with fp32 GEMMs (slower than fp32 on a CPU);
- weights signed int8, symmetric, per output channel (full 8-bit range), in every layer: sparse int8
  tensor cores need each GEMM int8 (``--pad-k`` makes the first one's K a multiple of 4), so the
  input is quantized too, after :func:`equalize_input`.

Both: a zero weight quantizes to exactly 0, so the N:M zeros survive (checked after quantization, not
assumed); only ``Gemm`` (and, for ``ort``, the ReLU folded into it) is quantized, the action scaling
(Tanh, Mul, Add with the bounds) stays fp32; biases stay fp32 (``QuantizeBias=False``: TensorRT
rejects int32-quantized Gemm biases, and ONNX Runtime fuses an fp32 bias into QGemm as well).

Calibration: MinMax over observations the policy itself visits (its deterministic episodes on seeds
other than the verification's, plus random-action states), or a user's ``.npy``. MinMax rather
than entropy or percentile because a policy's rare large activations are the states where control
matters (a fall, a hard contact): clipping them to tighten the common range trades exactly the
wrong error, and the states come from the policy's own distribution, not from a noisy dataset.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nmrl.errors import NmrlError
from nmrl.export.verify import ModelCheck, inspect_model
from nmrl.policy_file import metadata_of, read_claims

CALIBRATION_METHOD = "minmax"
PRE_TANH_RANGE = 3.0
"""The ``ort`` recipe quantizes the pre-tanh action on at most [-3, 3] (see the module docstring)."""

Int8Target = Literal["ort", "tensorrt"]
INT8_TARGETS: tuple[str, ...] = ("ort", "tensorrt")
FirstLayer = Literal["measure", "fp32", "int8"]
FIRST_LAYER_CHOICES: tuple[str, ...] = ("measure", "fp32", "int8")

CHOICE_BATCH = 256
"""The batch the ``ort`` recipe times its two first-layer candidates at (a vectorized env's step)."""
CHOICE_SPEEDUP = 1.10
"""The int8 first layer must be at least this much faster than the fp32 one to be chosen: below it,
the two are within the timing noise of a shared machine and fp32 (never less accurate) stays."""
CHOICE_ERROR_BUDGET = 0.05
"""... and its mean action error against the fp32 graph (fraction of the action range) at most this:
half the int8 parity tolerance, so the choice never spends the verification's margin."""
CHOICE_ERROR_RATIO = 2.0
"""... and at most this many times the fp32-first candidate's mean error."""


@dataclass(frozen=True)
class Int8Recipe:
    """Quantizer settings for one runtime (see the module docstring for why each)."""

    target: str
    unsigned_activations: bool
    """u8 asymmetric activations (ReLU folded into the output quantization) vs s8 symmetric."""
    quantize_outputs: bool
    """Gemm outputs quantized (ONNX Runtime fuses QGemm), the pre-tanh one on a clipped range."""
    reduce_range: bool
    """7-bit weights: no int16 saturation in u8 x s8 kernels of x86 CPUs without VNNI."""
    first_layer_fp32: bool
    """The first layer (K = the observation width) stays fp32 and the observations unquantized."""
    first_layer_measured: bool = False
    """Whether the first layer's precision is chosen per policy (:func:`choose_first_layer`), with
    ``first_layer_fp32`` the default that stays unless int8 measures clearly faster and as accurate."""

    def describe(self) -> dict[str, str]:
        activations = "uint8 asymmetric per tensor" if self.unsigned_activations else "int8 symmetric per tensor"
        outputs = (
            f"Gemm outputs quantized (pre-tanh range within +-{PRE_TANH_RANGE:g})"
            if self.quantize_outputs
            else "Gemm outputs fp32"
        )
        weights = "int8 symmetric per output channel" + (" (7-bit range)" if self.reduce_range else "")
        layers = "all but the first (fp32, observations unquantized)" if self.first_layer_fp32 else "all"
        if self.first_layer_measured:
            layers += "; the first layer's precision measured for this policy"
        return {
            "target": self.target,
            "int8 layers": layers,
            "weights": weights,
            "activations": activations,
            "outputs": outputs,
        }


RECIPES: dict[str, Int8Recipe] = {
    "ort": Int8Recipe(
        "ort",
        unsigned_activations=True,
        quantize_outputs=True,
        reduce_range=True,
        first_layer_fp32=True,
        first_layer_measured=True,
    ),
    "tensorrt": Int8Recipe(
        "tensorrt", unsigned_activations=False, quantize_outputs=False, reduce_range=False, first_layer_fp32=False
    ),
}


@dataclass(frozen=True)
class QuantizationReport:
    """What quantization did to the GEMM weights."""

    calibration: str
    """Where the calibration observations came from."""
    recipe: Int8Recipe
    count: int
    method: str
    zeros_kept: int
    """Weights that were exactly 0 in fp32 and are 0 in int8 (all of them, or quantization fails)."""
    rounded_to_zero: int
    """Nonzero fp32 weights smaller than half a quantization step: int8 zeros now (more zeros keep N:M)."""
    first_layer: FirstLayerChoice | None = None
    """How the ``ort`` recipe chose the first layer's precision (None: the recipe fixes it, or the
    caller did)."""

    def to_metadata(self) -> dict[str, object]:
        return {
            "format": "QDQ",
            **self.recipe.describe(),
            "method": self.method,
            "calibration": self.calibration,
            "calibration_count": self.count,
            **({"first layer": self.first_layer.to_metadata()} if self.first_layer is not None else {}),
        }

    def __str__(self) -> str:
        return (
            f"int8 Q/DQ for {self.recipe.target} ({self.method} calibration on {self.count} observations: "
            f"{self.calibration}); "
            f"{self.zeros_kept} zero weights kept zero, {self.rounded_to_zero} small weights rounded to zero"
            + ("" if self.first_layer is None else f"; {self.first_layer}")
        )


@dataclass(frozen=True)
class FirstLayerChoice:
    """The ``ort`` recipe's two candidates for one policy, as measured, and the one kept."""

    chosen: str
    """``fp32`` or ``int8``."""
    latency_us: dict[str, float]
    """Median ONNX Runtime CPU latency (1 thread, batch :data:`CHOICE_BATCH`) of the fp32 graph and
    of each candidate (``first fp32`` / ``first int8``)."""
    mean_error: dict[str, float]
    """Each candidate's mean (over the calibration states) of the largest action error against the
    fp32 graph, as a fraction of the action range."""
    reason: str

    def to_metadata(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "latency_us_batch_256": {k: round(v, 1) for k, v in self.latency_us.items()},
            "mean_error": {k: round(v, 5) for k, v in self.mean_error.items()},
            "reason": self.reason,
        }

    def __str__(self) -> str:
        fp32 = self.latency_us["fp32"]
        speed = ", ".join(f"{name} {fp32 / self.latency_us[name]:.2f}x" for name in ("first fp32", "first int8"))
        return (
            f"first layer {self.chosen} (measured at batch {CHOICE_BATCH} vs the fp32 file: {speed}; mean error "
            f"{self.mean_error['first fp32']:.4f} / {self.mean_error['first int8']:.4f}: {self.reason})"
        )


def pick_first_layer(latency_us: dict[str, float], mean_error: dict[str, float]) -> tuple[str, str]:
    """The rule of :func:`choose_first_layer` on its measurements (keys ``first fp32`` and
    ``first int8``): the precision kept and why."""
    speedup = latency_us["first fp32"] / latency_us["first int8"]
    error = mean_error["first int8"]
    if speedup < CHOICE_SPEEDUP:
        return "fp32", f"int8 first runs {speedup:.2f}x the fp32-first speed, under {CHOICE_SPEEDUP:g}x"
    if error > CHOICE_ERROR_BUDGET:
        return "fp32", f"int8 first errs {error:.4f} of the range, over {CHOICE_ERROR_BUDGET:g}"
    if error > CHOICE_ERROR_RATIO * mean_error["first fp32"]:
        return "fp32", f"int8 first errs over {CHOICE_ERROR_RATIO:g}x the fp32-first error"
    return "int8", f"int8 first is {speedup:.2f}x faster and as accurate"


def choose_first_layer(
    fp32: onnx.ModelProto, first_fp32: onnx.ModelProto, first_int8: onnx.ModelProto, observations: np.ndarray
) -> FirstLayerChoice:
    """Time both candidates against the fp32 graph (interleaved, under the ``ort`` backend nmrl
    deploys with) and measure their action error on ``observations``; keep the int8 first layer only
    when it is :data:`CHOICE_SPEEDUP` faster and within :data:`CHOICE_ERROR_BUDGET` and
    :data:`CHOICE_ERROR_RATIO` of the fp32-first error."""
    from nmrl.deploy.bench import time_policies
    from nmrl.deploy.ort_backend import OrtPolicy
    from nmrl.deploy.policy import Policy

    models = {"fp32": fp32, "first fp32": first_fp32, "first int8": first_int8}
    policies: dict[str, Policy] = {
        name: OrtPolicy(model.SerializeToString(), threads=1) for name, model in models.items()
    }
    try:
        latencies = time_policies(policies, CHOICE_BATCH, warmup=10, calls=100, max_seconds=0.5)
        latency = {name: float(np.median(values)) / 1e3 for name, values in latencies.items()}
        reference = policies["fp32"].act(observations).astype(np.float64)
        bounds = read_claims(metadata_of(fp32)).action_bounds
        span = np.full(reference.shape[1], 2.0) if bounds is None else np.subtract(bounds[1], bounds[0])
        span = np.where(np.isfinite(span) & (span > 0), span, 2.0)
        error = {
            name: float((np.abs(policies[name].act(observations) - reference) / span).max(axis=1).mean())
            for name in ("first fp32", "first int8")
        }
    finally:
        for policy in policies.values():
            policy.close()
    chosen, reason = pick_first_layer(latency, error)
    return FirstLayerChoice(chosen, latency, error, reason)


NORMALIZATION_OPS = ("Sub", "Div", "Clip")
"""The ops of ``--normalize-obs`` between the graph's input and its first layer (see
:class:`nmrl.train.normalization.ObsNormalization`)."""


def first_layer_input(graph: onnx.GraphProto) -> str:
    """The tensor the first layer reads, before any K padding: the graph's input, or the output of
    the observation normalisation (a chain of :data:`NORMALIZATION_OPS`, each the one reader of
    the tensor before it)."""
    current = graph.input[0].name
    while True:
        readers = [node for node in graph.node if current in node.input]
        if len(readers) != 1 or readers[0].op_type not in NORMALIZATION_OPS or readers[0].input[0] != current:
            return current
        current = readers[0].output[0]


def _tensor_values(model: onnx.ModelProto, name: str, observations: np.ndarray) -> np.ndarray:
    """The values of the graph's tensor ``name`` on ``observations`` (run in ONNX Runtime)."""
    import onnxruntime as ort

    input_name = model.graph.input[0].name
    if name == input_name:
        return observations
    probe = copy.deepcopy(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([name], {input_name: np.ascontiguousarray(observations, dtype=np.float32)})[0]


def pad_first_gemm_k(model: onnx.ModelProto, multiple: int = 4) -> int:
    """Pad the first layer's K (the observation width) to a multiple of ``multiple`` inside the graph,
    in place: the input keeps the env's width, a ``Pad`` appends zero columns, and the first Gemm's
    weight gets as many zero columns. Returns the padding added (0: already a multiple)."""
    graph = model.graph
    input_name = first_layer_input(graph)
    gemm = next((node for node in graph.node if node.op_type == "Gemm" and node.input[0] == input_name), None)
    if gemm is None:
        raise NmrlError("cannot pad K: the observations do not feed a Gemm directly (or through their normalisation)")
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight = next((init for init in graph.initializer if init.name == gemm.input[1]), None)
    if weight is None:
        raise NmrlError("cannot pad K: the first Gemm's weight is not an initializer")
    values = numpy_helper.to_array(weight)
    k_axis = 1 if trans_b else 0
    pad = (-values.shape[k_axis]) % multiple
    if pad == 0:
        return 0
    widths = [(0, 0), (0, 0)]
    widths[k_axis] = (0, pad)
    weight.CopyFrom(numpy_helper.from_array(np.pad(values, widths), weight.name))
    padded = f"{input_name}_padded_k"
    pads = numpy_helper.from_array(np.array([0, 0, 0, pad], dtype=np.int64), f"{padded}_pads")
    graph.initializer.append(pads)
    gemm.input[0] = padded
    index = list(graph.node).index(gemm)
    graph.node.insert(index, helper.make_node("Pad", [input_name, pads.name], [padded], name="pad_k", mode="constant"))
    # Recorded intermediate shapes (the exporter's value_info) predate the padding: let tools infer them.
    del graph.value_info[:]
    return pad


def equalize_input(model: onnx.ModelProto, observations: np.ndarray) -> np.ndarray:
    """Give every observation feature the same int8 range, in place, without changing the function.

    Raw observations mix units (HalfCheetah: joint angles within +-0.5, velocities up to +-27), and a
    per-tensor int8 scale set by the largest feature leaves the small ones a few steps. This divides
    feature j by ``s_j = max |obs_j|`` over the calibration states (a ``Mul`` on the input) and
    multiplies column j of the first layer's weight by ``s_j``: the same product, now quantized on
    features within [-1, 1]. (SmoothQuant's migration of activation range into weights, taken all the
    way for the input; zeros of the weight stay zeros.) An observation beyond its calibrated range is
    clipped to it. Widening the input's int8 range past the calibration (tried: twice it) doubled the
    worst on-policy error of a trained HalfCheetah policy, so the range is the calibration's, and the
    calibration holds random-action states besides the policy's own. Returns the scales."""
    graph = model.graph
    input_name = first_layer_input(graph)  # with --normalize-obs: the normalised observations
    consumers = [node for node in graph.node if input_name in node.input]
    gemm = next((node for node in graph.node if node.op_type == "Gemm"), None)
    if gemm is None or len(consumers) != 1:
        raise NmrlError("cannot equalize the input: expected one node reading the observations, then a Gemm")
    observations = _tensor_values(model, input_name, observations)
    weight = next((init for init in graph.initializer if init.name == gemm.input[1]), None)
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    if weight is None:
        raise NmrlError("cannot equalize the input: the first Gemm's weight is not an initializer")
    obs_dim = observations.shape[1]
    scales = np.abs(observations).max(axis=0).astype(np.float32)
    scales = np.where(scales > 1e-6, scales, np.float32(1.0))
    values = numpy_helper.to_array(weight).copy()
    if trans_b:
        values[:, :obs_dim] *= scales[None, :]
    else:
        values[:obs_dim, :] *= scales[:, None]
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    inverse = numpy_helper.from_array((1.0 / scales).astype(np.float32), f"{input_name}_equalize")
    graph.initializer.append(inverse)
    scaled = f"{input_name}_equalized"
    consumer = consumers[0]
    consumer.input[list(consumer.input).index(input_name)] = scaled
    index = list(graph.node).index(consumer)
    graph.node.insert(index, helper.make_node("Mul", [input_name, inverse.name], [scaled], name="equalize_obs"))
    del graph.value_info[:]
    return scales


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an array, in batches."""

    def __init__(self, input_name: str, observations: np.ndarray, batch: int = 256) -> None:
        self.batches = [observations[i : i + batch] for i in range(0, len(observations), batch)]
        self.input_name, self.index = input_name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {self.input_name: self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def pre_tanh_range(model: onnx.ModelProto, observations: np.ndarray) -> tuple[str, tuple[float, float]]:
    """The last Gemm's output (the pre-tanh action) and the range the ``ort`` recipe quantizes it on:
    its calibrated min/max clipped to ``[-PRE_TANH_RANGE, PRE_TANH_RANGE]``."""
    import onnxruntime as ort

    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    last = gemms[-1].output[0] if gemms else None
    if last is None or not any(node.op_type == "Tanh" and node.input[0] == last for node in model.graph.node):
        raise NmrlError("unexpected policy graph: its last Gemm does not feed the tanh of the action")
    probe = copy.deepcopy(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(last))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run([last], {model.graph.input[0].name: observations})[0]
    low = max(float(values.min()), -PRE_TANH_RANGE)
    high = min(float(values.max()), PRE_TANH_RANGE)
    return last, (min(low, 0.0), max(high, 0.0))


def quantize_int8(
    model: onnx.ModelProto,
    observations: np.ndarray,
    calibration: str,
    target: Int8Target = "ort",
    first_layer: FirstLayer = "measure",
) -> tuple[onnx.ModelProto, QuantizationReport]:
    """The int8 Q/DQ form of an fp32 policy graph for ``target`` (a :data:`RECIPES` key: ``ort`` runs
    fast in ONNX Runtime on a CPU, ``tensorrt`` builds in TensorRT), calibrated (MinMax) on
    ``observations``.

    ``first_layer``: ``measure`` lets the recipe decide (``ort`` quantizes the graph both ways and
    keeps what :func:`choose_first_layer` measures for this policy; ``tensorrt`` makes it int8);
    ``fp32`` or ``int8`` fix it (``tensorrt`` refuses ``fp32``: sparse int8 tensor cores need every
    GEMM int8).

    Raises :class:`NmrlError` when a zero weight did not stay zero. The graph's metadata is kept.
    """
    if target not in RECIPES:
        raise NmrlError(f"unknown int8 target {target!r}: one of {', '.join(INT8_TARGETS)}")
    if first_layer not in FIRST_LAYER_CHOICES:
        raise NmrlError(f"unknown first-layer precision {first_layer!r}: one of {', '.join(FIRST_LAYER_CHOICES)}")
    recipe = RECIPES[target]
    if first_layer == "fp32" and not recipe.first_layer_fp32 and not recipe.first_layer_measured:
        raise NmrlError(
            f"the {target} recipe quantizes every GEMM (sparse int8 kernels need each one int8); "
            "a fp32 first layer is for --int8-target ort"
        )
    before = inspect_model(model)
    if any(layer.dtype != "float32" for layer in before.layers):
        raise NmrlError("int8 quantization starts from the fp32 graph")

    def with_first(fp32: bool) -> Int8Recipe:
        return dataclasses.replace(recipe, first_layer_fp32=fp32)

    if first_layer != "measure":
        recipe = dataclasses.replace(with_first(first_layer == "fp32"), first_layer_measured=False)
        quantized, zeros_kept, rounded = _quantize(model, before, observations, recipe)
        choice = None
    elif recipe.first_layer_measured:
        candidates = {fp32: _quantize(model, before, observations, with_first(fp32)) for fp32 in (True, False)}
        choice = choose_first_layer(model, candidates[True][0], candidates[False][0], observations)
        recipe = with_first(choice.chosen == "fp32")
        quantized, zeros_kept, rounded = candidates[recipe.first_layer_fp32]
    else:
        quantized, zeros_kept, rounded = _quantize(model, before, observations, recipe)
        choice = None
    report = QuantizationReport(calibration, recipe, len(observations), CALIBRATION_METHOD, zeros_kept, rounded, choice)
    return quantized, report


def _quantize(
    model: onnx.ModelProto, before: ModelCheck, observations: np.ndarray, recipe: Int8Recipe
) -> tuple[onnx.ModelProto, int, int]:
    """:func:`quantize_int8` with one concrete recipe: the Q/DQ graph, the zero weights kept and
    the small weights rounded to zero."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = copy.deepcopy(model)
    first = next(node for node in model.graph.node if node.op_type == "Gemm")
    if recipe.first_layer_fp32 and not first.name:
        raise NmrlError("unexpected policy graph: its first Gemm has no name to keep it fp32 by")
    if not recipe.first_layer_fp32:
        equalize_input(model, observations)
    input_name = model.graph.input[0].name
    extra_options: dict[str, object] = {
        "ActivationSymmetric": not recipe.unsigned_activations,
        "WeightSymmetric": True,
        "QuantizeBias": False,
    }
    if recipe.quantize_outputs:
        pre_tanh, (low, high) = pre_tanh_range(model, observations)
        extra_options["TensorQuantOverrides"] = {pre_tanh: [{"rmin": np.float32(low), "rmax": np.float32(high)}]}
    else:
        extra_options["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
    # The quantizer logs a pre-processing hint on the root logger at every call: a filter on that
    # logger drops its records below ERROR without changing the level the application set.
    root = logging.getLogger()

    def quiet(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="nmrl-quantize-") as scratch:
            source, output = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            onnx.save(model, str(source))
            quantize_static(
                str(source),
                str(output),
                _Reader(input_name, np.ascontiguousarray(observations, dtype=np.float32)),
                quant_format=QuantFormat.QDQ,
                # Relu: asymmetric activations let the quantizer fold it into the Gemm's output Q.
                op_types_to_quantize=["Gemm", "Relu"] if recipe.quantize_outputs else ["Gemm"],
                per_channel=True,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8 if recipe.unsigned_activations else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=[first.name] if recipe.first_layer_fp32 else [],
                extra_options=extra_options,
            )
            quantized = onnx.load(str(output))
    finally:
        root.removeFilter(quiet)
    after = inspect_model(quantized)
    expected = ["float32" if index == 0 and recipe.first_layer_fp32 else "int8" for index in range(len(before.layers))]
    if [layer.dtype for layer in after.layers] != expected:
        raise NmrlError(f"the quantizer did not make the GEMM weights {expected} (int8: behind DequantizeLinear)")
    zeros_kept = rounded = 0
    for old, new in zip(before.layers, after.layers, strict=True):
        fp32, int8 = before.weights[old.weight_name], after.weights[new.weight_name]
        lost = int(np.count_nonzero(int8[fp32 == 0]))
        if lost:
            raise NmrlError(f"quantization made {lost} zero weights of {old.weight_name} nonzero; nothing written")
        zeros_kept += int((fp32 == 0).sum())
        rounded += int(((fp32 != 0) & (int8 == 0)).sum())
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    return quantized, zeros_kept, rounded
