"""Human-readable sparsity reports of an ONNX model (rich tables). Torch-free."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nmrl.errors import NmrlError, printable
from nmrl.export.verify import ModelCheck, claim_status
from nmrl.policy_file import PolicyClaims, read_claims

_SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
# Piped output (CI logs, files) gets this width instead of rich's 80 columns, so rows stay whole.
REPORT_WIDTH = 140


def short_dtype(name: str) -> str:
    """``float16`` -> ``fp16`` (the names nmrl's --dtype options use); other names unchanged."""
    return _SHORT_DTYPES.get(name, name)


def untrusted(text: object, limit: int | None = 300) -> str:
    """Text read from a file, ready for a rich console: control characters escaped
    (:func:`nmrl.errors.printable`) and rich markup (``[red]``) shown as typed, never applied."""
    return escape(printable(text, limit))


def console() -> Console:
    """A console for reports: the terminal's width, or REPORT_WIDTH when not a terminal."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=REPORT_WIDTH)


def layer_table(check: ModelCheck) -> Table:
    """One row per GEMM: shape, K, dtype, density, finest N:M, 2:4 sparse-tensor-core verdict."""
    table = Table(title="GEMM layers (N:M groups along K)", title_justify="left")
    for column in ("layer", "op", "shape", "K", "dtype", "density", "N:M", "2:4 TC", "why not / notes"):
        table.add_column(column, justify="right" if column in ("K", "density") else "left")
    for layer in check.layers:
        verdict = "[green]yes[/]" if layer.eligible_2of4 else "[red]no[/]"
        detail = "; ".join(layer.reasons) if layer.reasons else "; ".join(layer.notes)
        table.add_row(
            untrusted(layer.weight_name, 80),
            layer.op,
            "x".join(map(str, layer.shape)) + f" (K: axis {layer.k_axis})",
            str(layer.k),
            short_dtype(layer.dtype),
            f"{layer.density:.3f}",
            str(layer.finest) if layer.finest else "dense",
            verdict,
            untrusted(detail, None),
        )
    return table


def summary_lines(check: ModelCheck) -> list[str]:
    """What the file is, what it claims and whether its weights keep the claim."""
    lines = []
    if check.is_nmrl:
        try:
            claims, unreadable = read_claims(check.metadata, check.source), None
        except NmrlError as error:  # a report describes a broken file rather than refusing to
            claims, unreadable = PolicyClaims(), str(error)
        # The training config names unstructured runs too ("0.9"); nmrl.sparsity holds only N:M claims.
        trained = (claims.config or {}).get("sparsity")
        trained_text = f"{trained} (N:M claim: {claims.sparsity})" if trained else str(claims.sparsity)
        line = (
            f"nmrl policy: env {claims.env_id or '?'}, obs {claims.obs_dim} -> act {claims.act_dim}, "
            f"{claims.algo or '?'} trained with sparsity {trained_text}, dtype {claims.dtype} "
            f"(I/O {claims.io_dtype}), opset {check.opset}"
        )
        lines.append(untrusted(line, 1000))  # every value in it is the file's
        if claims.obs_normalization is not None:
            stats = claims.obs_normalization
            lines.append(
                untrusted(
                    "takes raw observations: normalised in the graph before the first GEMM "
                    f"(running mean/variance of {stats['count']:g} observations, frozen at export; clipped to "
                    f"+-{stats['clip']:g})"
                )
            )
        if unreadable is not None:
            lines.append(f"[red]{untrusted(unreadable, None)}[/]")
    else:
        lines.append(f"not an nmrl file (no nmrl metadata); opset {check.opset}")
    status = claim_status(check)
    if check.is_nmrl or status.verdict != "none":
        for line in status.lines:  # they name the file's weights
            lines.append(f"[red]{untrusted(line, None)}[/]" if status.failed else untrusted(line, None))
    quantized = [layer.weight_name for layer in check.layers if layer.dtype in ("int8", "uint8")]
    if quantized:
        lines.append(
            f"int8 layers (weights behind DequantizeLinear or integer GEMMs): {len(quantized)} "
            f"({untrusted(', '.join(quantized), None)}); N:M is judged on the quantized values, zero = the zero point"
        )
    eligible = sum(layer.eligible_2of4 for layer in check.layers)
    lines.append(f"{eligible} of {len(check.layers)} GEMM layers eligible for 2:4 sparse tensor cores")
    return lines


def print_report(check: ModelCheck, out: Console | None = None) -> None:
    out = out or console()
    out.print(layer_table(check))
    for line in summary_lines(check):
        out.print(line, highlight=False, soft_wrap=True)
    if any(not layer.eligible_2of4 for layer in check.layers):
        out.print(
            "2:4 TC: sparse tensor cores can run the layer as stored (2:4 along K, K % 4 == 0, "
            "fp16/bf16/int8/fp8); TensorRT still times sparse vs dense tactics and keeps the faster"
        )
