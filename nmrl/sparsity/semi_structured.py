"""The CUDA fast path: 2:4 layers on sparse tensor cores through ``torch.sparse`` semi-structured tensors.

On an Ampere-or-newer GPU, PyTorch compresses a 2:4 weight (``to_sparse_semi_structured``: half
the values plus 2-bit indices) and multiplies it with cuSPARSELt (or CUTLASS on 8.x) in fp16/bf16.
This module decides, per layer, whether that path applies and pays, and runs it:

* :func:`probe_semi_structured` — does it work *here*: CUDA, compute capability, and a tiny real
  conversion + matmul per dtype (cached per device).
* :func:`choose_layers` — per-layer choice (pattern fits 2:4, shape fits the kernels, optionally
  measured not to lose); pure logic, testable without a GPU.
* :func:`enable_semi_structured` — training: selected ``NMLinear`` layers compute their forward
  with the compressed ``shadow * mask`` (re-compressed when the weight or the mask changes) under
  fp16/bf16 autocast. The backward pass is exact: the input gradient uses the masked weight
  densely (a 1-D N:M mask is 2:4 along ``in`` only, and the input-gradient GEMM reduces over
  ``out``, so sparse tensor cores cannot run it), the weight gradient is dense and gets the same
  straight-through + SR-STE treatment as on CPU. Everything else falls back to the masked-dense
  ``NMLinear`` forward, so a converted module still runs on CPU or in fp32.
* :func:`to_semi_structured` — inference: a trained actor, in fp16/bf16 on the GPU, with each
  selected layer's weight replaced by its compressed form.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity.layers import NMLinear, nm_layers, replace_submodule
from nmrl.sparsity.mask import check_nm
from nmrl.sparsity.pattern import DENSE, NMPattern, fits_2of4

FAST_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}

# Smallest sparse-operand (weight) tile per backend: rows and cols must be multiples of these
# (torch/sparse/semi_structured.py, _DTYPE_SHAPE_CONSTRAINTS for fp16/bf16).
WEIGHT_TILE = {"cusparselt": (16, 16), "cutlass": (32, 64)}


@dataclass(frozen=True)
class SemiStructuredSupport:
    """What the probe found on one device."""

    available: bool
    reason: str  # why not, or a one-line summary when available
    device: str | None = None
    compute_capability: tuple[int, int] | None = None
    backend: str | None = None  # "cusparselt" or "cutlass"
    cusparselt_version: int | None = None
    dtypes: tuple[str, ...] = ()  # fp16/bf16 names for which a real conversion + matmul worked


def semi_structured_backend(compute_capability: tuple[int, int]) -> tuple[str | None, str]:
    """The 2:4 kernels ``to_sparse_semi_structured`` will really use on a device of this compute
    capability, and why: (``"cusparselt"`` | ``"cutlass"`` | None, reason).

    PyTorch picks its subclass from one switch: cuSPARSELt unless
    ``SparseSemiStructuredTensor._FORCE_CUTLASS`` is set. It never falls back to CUTLASS when
    cuSPARSELt is missing, and the CUTLASS 2:4 kernels are built for compute capability 8.x only
    (Hopper and newer run 2:4 through cuSPARSELt alone).
    """
    from torch.sparse import SparseSemiStructuredTensor

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        if compute_capability[0] == 8:
            return "cutlass", "CUTLASS (forced by SparseSemiStructuredTensor._FORCE_CUTLASS)"
        major, minor = compute_capability
        return None, f"CUTLASS is forced, but its 2:4 kernels run on compute capability 8.x only (not {major}.{minor})"
    if not torch.backends.cusparselt.is_available():
        return None, "this PyTorch build has no cuSPARSELt, and PyTorch uses CUTLASS 2:4 kernels only when forced"
    return "cusparselt", f"cuSPARSELt {torch.backends.cusparselt.version()}"


def _tiny_check(dtype: torch.dtype, device: torch.device) -> str | None:
    """Convert a real 2:4 matrix and multiply; None when the result matches dense, else why not."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    weight = torch.randn(64, 128, generator=generator)
    weight = (weight * _two_of_four_mask(weight)).to(device=device, dtype=dtype)
    inputs = torch.randn(32, 128, generator=generator).to(device=device, dtype=dtype)
    try:
        sparse = torch.sparse.to_sparse_semi_structured(weight)
        result = nn.functional.linear(inputs, sparse)
        torch.cuda.synchronize(device)
    except Exception as error:  # any failure means "not usable here"; keep the message
        return f"{error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    expected = nn.functional.linear(inputs.float(), weight.float())
    if not torch.allclose(result.float(), expected, rtol=2e-2, atol=2e-2):
        return "sparse matmul result differs from dense"
    return None


def _two_of_four_mask(weight: torch.Tensor) -> torch.Tensor:
    from nmrl.sparsity.mask import nm_mask

    return nm_mask(weight, NMPattern(2, 4))


@functools.cache
def probe_semi_structured(device_index: int | None = None) -> SemiStructuredSupport:
    """Whether 2:4 semi-structured matmuls work on this machine's CUDA device (cached)."""
    if not torch.cuda.is_available():
        return SemiStructuredSupport(False, "no CUDA device (PyTorch sees none)")
    index = torch.cuda.current_device() if device_index is None else device_index
    device = torch.device("cuda", index)
    name = torch.cuda.get_device_name(index)
    capability = torch.cuda.get_device_capability(index)
    backend, backend_reason = semi_structured_backend(capability)
    version = torch.backends.cusparselt.version() if backend == "cusparselt" else None
    common = dict(device=name, compute_capability=capability, backend=backend, cusparselt_version=version)
    if capability < (8, 0):
        return SemiStructuredSupport(
            False,
            f"compute capability {capability[0]}.{capability[1]} < 8.0: no sparse tensor cores",
            **common,
        )
    if backend is None:
        return SemiStructuredSupport(False, f"no 2:4 kernels will run: {backend_reason}", **common)
    working, failures = [], []
    for dtype_name, dtype in FAST_DTYPES.items():
        failure = _tiny_check(dtype, device)
        if failure is None:
            working.append(dtype_name)
        else:
            failures.append(f"{dtype_name}: {failure}")
    if not working:
        return SemiStructuredSupport(False, "; ".join(failures), **common)
    return SemiStructuredSupport(
        True, f"{backend} 2:4 matmul works for {', '.join(working)}", dtypes=tuple(working), **common
    )


@dataclass(frozen=True)
class LayerChoice:
    """Whether one layer runs on sparse tensor cores, and why."""

    name: str
    shape: tuple[int, int]  # (out, in)
    pattern: str
    sparse: bool
    reason: str

    def __str__(self) -> str:
        path = "2:4 kernels" if self.sparse else "masked dense"
        return f"{self.name:<30} {self.shape!s:<14} {self.pattern:<6} {path:<13} {self.reason}"


def shape_supported(out_features: int, in_features: int, backend: str) -> bool:
    """Whether the kernels of ``backend`` take a [out, in] weight without padding it."""
    rows, cols = WEIGHT_TILE[backend]
    return out_features >= rows and out_features % rows == 0 and in_features >= cols and in_features % cols == 0


def layer_pattern(layer: nn.Linear) -> NMPattern:
    """An NMLinear's pattern; for a plain Linear, 2:4 when its weights happen to obey it (a
    materialized or imported network), else dense."""
    if isinstance(layer, NMLinear):
        return layer.pattern
    two_of_four = NMPattern(2, 4)
    return two_of_four if not check_nm(layer.weight.detach(), two_of_four) else DENSE


def linear_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear (NMLinear included) of ``module`` with its qualified name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]


def _effective_weight(layer: nn.Linear) -> torch.Tensor:
    return layer.effective_weight() if isinstance(layer, NMLinear) else layer.weight.detach()


def choose_layers(
    layers: list[tuple[str, nn.Linear]],
    support: SemiStructuredSupport,
    speedups: Mapping[str, float] | None = None,
) -> list[LayerChoice]:
    """The per-layer decision. ``speedups`` maps layer names to measured dense/sparse time ratios
    (> 1: sparse is faster); a layer measured at <= 1 stays masked-dense."""
    choices = []
    backend = support.backend or "cusparselt"
    for name, layer in layers:
        measured = None if speedups is None else speedups.get(name)
        pattern = layer_pattern(layer)
        if not support.available:
            sparse, reason = False, f"no 2:4 path here: {support.reason}"
        elif not fits_2of4(pattern):
            sparse, reason = False, f"pattern {pattern} is not 2:4-compatible"
        elif not shape_supported(layer.out_features, layer.in_features, backend):
            rows, cols = WEIGHT_TILE[backend]
            sparse, reason = False, f"{backend} needs out % {rows} == 0 and in % {cols} == 0"
        elif measured is not None and measured <= 1.0:
            sparse, reason = False, f"measured {measured:.2f}x: sparse not faster"
        elif measured is not None:
            sparse, reason = True, f"measured {measured:.2f}x faster"
        else:
            sparse, reason = True, "fits 2:4 and the kernel shapes (not measured)"
        shape = (layer.out_features, layer.in_features)
        choices.append(LayerChoice(name, shape, str(pattern), sparse, reason))
    return choices


def format_choices(choices: list[LayerChoice]) -> str:
    return "\n".join(str(choice) for choice in choices)


def time_cuda(fn: Callable[[], object], repeats: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_speedup(
    out_features: int, in_features: int, batch: int, dtype: torch.dtype = torch.float16, repeats: int = 50
) -> float:
    """Dense time / 2:4 time of one inference ``linear`` with this weight shape and batch, on the
    current GPU (the weight compressed once, as a deployed actor holds it)."""
    weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    weight = weight * _two_of_four_mask(weight)
    inputs = torch.randn(batch, in_features, device="cuda", dtype=dtype)
    sparse = torch.sparse.to_sparse_semi_structured(weight)
    dense_ms = time_cuda(lambda: nn.functional.linear(inputs, weight), repeats)
    sparse_ms = time_cuda(lambda: nn.functional.linear(inputs, sparse), repeats)
    return dense_ms / sparse_ms


def layer_training_step(
    shape: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device | str, sparse: bool
) -> Callable[[], None]:
    """One training step of a 2:4 layer of ``shape`` (out, in), as training runs it: for the fast
    path, recompress ``shadow * mask`` (the optimizer moved the weights since the last step), the
    forward on sparse tensor cores and the exact backward; for the masked-dense layer, its forward
    and backward. Both under ``dtype`` autocast."""
    device = torch.device(device)
    out_features, in_features = shape
    layer = NMLinear(in_features, out_features, NMPattern(2, 4), device=device)
    if sparse:
        layer.__class__ = SemiStructuredNMLinear
        layer.drop_compressed()
    inputs = torch.randn(batch, in_features, device=device, requires_grad=True)
    upstream = torch.randn(batch, out_features, device=device, dtype=dtype)

    def step() -> None:
        if sparse:
            layer.drop_compressed()
        with torch.autocast(device.type, dtype=dtype):
            out = layer(inputs)
        out.backward(upstream)

    return step


def measure_layers(
    layers: list[tuple[str, nn.Linear]],
    batch: int,
    dtype: torch.dtype = torch.float16,
    training: bool = False,
    device: torch.device | str = "cuda",
) -> dict[str, float]:
    """Measured dense/2:4 speedup of every layer whose shape the kernels take, at ``batch`` rows;
    each distinct shape is timed once. ``training`` times a whole training step of the layer
    (:func:`layer_training_step`: recompress + forward + backward) instead of one inference matmul."""
    backend = semi_structured_backend(torch.cuda.get_device_capability())[0] if torch.cuda.is_available() else None
    backend = backend or "cusparselt"
    by_shape: dict[tuple[int, int], float] = {}  # networks repeat shapes: time each once
    speedups = {}
    for name, layer in layers:
        shape = (layer.out_features, layer.in_features)
        if not (fits_2of4(layer_pattern(layer)) and shape_supported(*shape, backend)):
            continue
        if shape not in by_shape:
            if training:
                dense_ms = time_cuda(layer_training_step(shape, batch, dtype, device, sparse=False))
                sparse_ms = time_cuda(layer_training_step(shape, batch, dtype, device, sparse=True))
                by_shape[shape] = dense_ms / sparse_ms
            else:
                by_shape[shape] = measure_speedup(*shape, batch, dtype)
        speedups[name] = by_shape[shape]
    return speedups


class _SemiStructuredLinearFn(torch.autograd.Function):
    """``y = x @ (W*mask)^T + b`` with the forward GEMM on sparse tensor cores.

    Backward (exact): grad_x = grad_y @ (W*mask) densely; grad_W = grad_y^T @ x, plus SR-STE's decay
    on the pruned entries (as ``NMLinear``'s SR-STE); grad_b = sum of grad_y.
    """

    @staticmethod
    def forward(ctx, x, weight, mask, bias, decay, packed, compute_dtype):
        x_c = x.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
        flat = x_c.reshape(-1, x_c.shape[-1])
        out = nn.functional.linear(flat, packed, bias_c).reshape(*x_c.shape[:-1], -1)
        ctx.save_for_backward(x_c, weight, mask)
        ctx.decay, ctx.has_bias, ctx.x_dtype = decay, bias is not None, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_c, weight, mask = ctx.saved_tensors
        grad_flat = grad_out.reshape(-1, grad_out.shape[-1]).to(x_c.dtype)
        x_flat = x_c.reshape(-1, x_c.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            effective = (weight.detach() * mask).to(x_c.dtype)
            grad_x = (grad_flat @ effective).reshape(*x_c.shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_flat.t() @ x_flat).to(weight.dtype)
            if ctx.decay:
                grad_w = torch.addcmul(grad_w, weight.detach(), 1.0 - mask, value=ctx.decay)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_flat.sum(dim=0).to(weight.dtype)
        return grad_x, grad_w, None, grad_b, None, None, None


class SemiStructuredNMLinear(NMLinear):
    """An ``NMLinear`` whose forward runs on sparse tensor cores when it can.

    Made by :func:`enable_semi_structured` by switching the class of an existing layer, so the
    parameters, buffers and ``state_dict`` keys stay exactly those of ``NMLinear`` (checkpoints
    load either way). The fast path is taken for CUDA inputs under fp16/bf16 autocast (or fp16/
    bf16 inputs); otherwise the masked-dense forward of ``NMLinear`` runs.
    """

    _packed_cache: tuple[tuple, torch.Tensor] | None

    def __getstate__(self) -> dict:
        # The compressed weight is derived data tied to this tensor's storage: copies and pickles
        # rebuild it on first use instead of carrying it along.
        state = self.__dict__.copy()
        state["_packed_cache"] = None
        return state

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        return dtype if dtype in FAST_DTYPES.values() else None

    def drop_compressed(self) -> None:
        """Forget the compressed weight: the next forward compresses ``shadow * mask`` afresh.
        Called after every optimizer step (a fused optimizer writes the weight without moving its
        version counter, so the cache key alone would keep a stale weight)."""
        self._packed_cache = None

    def packed_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The compressed ``shadow * mask``; recompressed only when the weight, the mask or the
        dtype changed (tensor version counters move on every in-place update)."""
        key = (self.weight._version, self.mask._version, dtype, self.weight.data_ptr())
        cache = getattr(self, "_packed_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                effective = (self.weight * self.mask).to(dtype).contiguous()
                packed = torch.sparse.to_sparse_semi_structured(effective)
            self._packed_cache = (key, packed)
            return packed
        return cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype(x)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return _SemiStructuredLinearFn.apply(
                x, self.weight, self.mask, self.bias, self.srste_decay, self.packed_weight(dtype), dtype
            )


def enable_semi_structured(
    module: nn.Module,
    support: SemiStructuredSupport | None = None,
    speedups: Mapping[str, float] | None = None,
    measure_batch: int | None = None,
) -> list[LayerChoice]:
    """Switch the selected ``NMLinear`` layers of ``module`` to the sparse-tensor-core forward, in
    place, and return the per-layer choice (the others stay masked-dense). ``measure_batch``
    times each candidate layer at that batch first and keeps only those where 2:4 wins."""
    support = support or probe_semi_structured()
    layers = nm_layers(module)
    if measure_batch is not None and support.available and speedups is None:
        speedups = measure_layers(layers, measure_batch)
    choices = choose_layers(layers, support, speedups)
    for (_, layer), choice in zip(layers, choices, strict=True):
        if choice.sparse and not isinstance(layer, SemiStructuredNMLinear):
            layer.__class__ = SemiStructuredNMLinear
            layer.drop_compressed()
        elif not choice.sparse and isinstance(layer, SemiStructuredNMLinear):
            layer.__class__ = NMLinear
    return choices


def disable_semi_structured(module: nn.Module) -> None:
    """Undo :func:`enable_semi_structured`: every layer back to the masked-dense ``NMLinear``."""
    for _, layer in nm_layers(module):
        if isinstance(layer, SemiStructuredNMLinear):
            layer.__class__ = NMLinear
            layer.__dict__.pop("_packed_cache", None)


@torch.no_grad()
def to_semi_structured(
    module: nn.Module,
    dtype: torch.dtype = torch.float16,
    support: SemiStructuredSupport | None = None,
    speedups: Mapping[str, float] | None = None,
    measure_batch: int | None = None,
    compress: bool = True,
) -> list[LayerChoice]:
    """Convert a trained network for inference, in place: move it to the GPU in ``dtype`` and
    replace every Linear by a plain ``nn.Linear`` holding its effective weight, compressed to 2:4
    where the layer was chosen (plain Linear layers whose weights obey 2:4 qualify too). Returns
    the per-layer choice. Needs a capable GPU (NmrlError otherwise); feed the result ``dtype``
    observations on the GPU. ``compress=False`` makes the dense twin: the same plain layers,
    nothing compressed (the fair baseline, without the mask multiply of the training layer)."""
    support = support or probe_semi_structured()
    dtype_name = next((name for name, value in FAST_DTYPES.items() if value == dtype), None)
    if not support.available:
        raise NmrlError(f"2:4 semi-structured inference is not available here: {support.reason}")
    if dtype_name not in support.dtypes:
        raise NmrlError(f"2:4 semi-structured matmul does not work for {dtype} here ({support.reason})")
    layers = linear_layers(module)
    if measure_batch is not None and speedups is None:
        speedups = measure_layers(layers, measure_batch, dtype)
    choices = choose_layers(layers, support, speedups)
    module.to(device="cuda", dtype=dtype)
    for (name, layer), choice in zip(layers, choices, strict=True):
        effective = _effective_weight(layer).contiguous()
        if choice.sparse and check_nm(effective, NMPattern(2, 4)):
            raise NmrlError(f"layer {name}: effective weight is not 2:4 along its input dim")
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        plain.to(device=effective.device, dtype=dtype)
        weight = torch.sparse.to_sparse_semi_structured(effective) if choice.sparse and compress else effective
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        replace_submodule(module, name, plain)
    return choices


def device_support(device: torch.device) -> SemiStructuredSupport:
    """What the 2:4 fast path can do on the device a run trains on."""
    if device.type != "cuda":
        return SemiStructuredSupport(False, f"needs a CUDA device (training on {device})")
    return probe_semi_structured(device.index)


def drop_compressed(layers: Iterable[nn.Module]) -> None:
    """Make every fast-path layer in ``layers`` recompress its weight on its next forward."""
    for layer in layers:
        if isinstance(layer, SemiStructuredNMLinear):
            layer.drop_compressed()


class SemiStructuredTraining:
    """The fast path for a training run: switches every network's eligible layers to 2:4 kernels
    (those whose whole training step, recompression included, measured faster at
    ``measure_batch`` rows, when given; each layer shape timed once for all networks) and provides
    the autocast context the update runs under. Fails with one clear NmrlError when the device
    cannot do it, rather than silently training masked-dense."""

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        dtype_name: str,
        device: torch.device,
        measure_batch: int | None = None,
    ) -> None:
        if dtype_name not in FAST_DTYPES:
            raise NmrlError(f"2:4 training runs in {' or '.join(FAST_DTYPES)}, not {dtype_name!r}")
        support = device_support(device)
        if not support.available:
            raise NmrlError(f"--semi-structured: 2:4 kernels do not work here: {support.reason}")
        if dtype_name not in support.dtypes:
            raise NmrlError(f"--semi-structured: 2:4 {dtype_name} does not work here ({support.reason})")
        self.dtype = FAST_DTYPES[dtype_name]
        self.device_type = device.type
        layers = {name: nm_layers(net) for name, net in networks.items()}
        speedups: dict[str, float] | None = None
        if measure_batch is not None:  # keep masked-dense the layers where 2:4 measured slower
            every_layer = [(f"{network}.{name}", layer) for network, named in layers.items() for name, layer in named]
            speedups = measure_layers(every_layer, measure_batch, self.dtype, training=True, device=device)
        self.choices = {}
        for network, net in networks.items():
            own = (
                None
                if speedups is None
                else {
                    name: speedups[f"{network}.{name}"]
                    for name, _ in layers[network]
                    if f"{network}.{name}" in speedups
                }
            )
            self.choices[network] = enable_semi_structured(net, support, own)
        if not self.engaged:
            reasons = sorted({choice.reason for choices in self.choices.values() for choice in choices})
            raise NmrlError(
                f"--semi-structured: no layer would run on 2:4 kernels ({'; '.join(reasons)}); "
                "train without --semi-structured"
            )

    @property
    def engaged(self) -> bool:
        """Whether any layer runs on 2:4 kernels."""
        return any(choice.sparse for choices in self.choices.values() for choice in choices)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def report(self) -> str:
        lines = []
        for network, choices in self.choices.items():
            lines += [str(replace(choice, name=f"{network}.{choice.name}")) for choice in choices]
        return "\n".join(lines)
