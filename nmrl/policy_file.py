"""The policy file's schema: what an nmrl ONNX file (and the nm-packed file around one) says about itself.

One definition shared by every writer and reader: ``nmrl export`` writes it, ``nmrl inspect``
judges it, and every deploy backend reads it. It imports neither PyTorch nor ONNX (a reader passes
the ``key -> text`` metadata map its runtime gives it; the writer takes any model object with
ONNX's ``metadata_props``), so a backend can read a file without export's torch parts.

An nmrl policy file is an ONNX graph ``obs [batch, obs_dim] (float32, or float16 for an fp16 I/O
file) -> action [batch, act_dim]`` whose model-level ``metadata_props`` hold ``nmrl.<name>`` keys:
text values stay text, everything else is JSON. ``nmrl.format`` names the schema's version; a
file without it (or with another version) is not an nmrl file to any reader.

:class:`PolicyClaims` lists every key, in the order the exporter writes them. :func:`write_claims`
is the one writer; :func:`read_claims` the one reader, which refuses a bad value with one line
naming the key (metadata is untrusted text: a file must never crash a reader or be half believed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from nmrl.errors import NmrlError

FORMAT = "nmrl-policy-onnx-v1"
"""``nmrl.format`` of the files this schema describes."""
PACKED_FORMAT = "nmrl-nm-packed-v1"
"""``format`` of an nm-packed file's own meta (its ONNX model carries the ``nmrl.*`` keys)."""
PREFIX = "nmrl."
FORMAT_KEY = PREFIX + "format"
INPUT_NAME, OUTPUT_NAME = "obs", "action"
"""The graph's input and output tensors."""
DTYPES = ("fp32", "fp16", "int8")
"""Values of ``nmrl.dtype`` (weights and arithmetic) and ``nmrl.io_dtype`` (input and output)."""


@dataclass(frozen=True)
class PolicyClaims:
    """What a policy file claims, one field per ``nmrl.<field>`` key (None: the file does not say).

    Values are what the JSON holds (lists, dicts), so the exporter writes what a reader gets back.
    """

    format: str | None = None
    version: str | None = None
    """The nmrl version that wrote the file."""
    obs_dim: int | None = None
    act_dim: int | None = None
    dtype: str | None = None
    io_dtype: str | None = None
    sparsity: str | None = None
    """The run's N:M claim over every GEMM weight (``2:4``), or ``none``."""
    layers: list[dict[str, Any]] | None = None
    """Per GEMM weight: ``weight`` (its name in the graph), ``pattern`` (``N:M`` or ``dense``),
    ``op``, ``shape``, ``k_axis``, ``density``, ``sparse_tensor_core_2of4``."""
    env_id: str | None = None
    env_kwargs: dict[str, Any] | None = None
    """The env's settings (``--env-kwargs``): keyword arguments of ``gymnasium.make``."""
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    algo: str | None = None
    trainer: str | None = None
    """The library that trained the policy when it is not nmrl (``stable-baselines3 2.7.0``)."""
    step: int | None = None
    checkpoint: str | None = None
    config: dict[str, Any] | None = None
    """The training run's configuration (TrainConfig.to_dict())."""
    obs_normalization: dict[str, Any] | None = None
    """The run's observation normalisation (``--normalize-obs``), frozen inside the graph as
    ``Sub``, ``Div``, ``Clip`` before the first layer, so the file takes raw observations:
    ``clip`` (the bound) and ``count`` (observations its statistics were taken over)."""
    pad_k: int | None = None
    """Zero columns a ``Pad`` adds to the first layer's K inside the graph."""
    quantization: dict[str, Any] | None = None
    """The int8 recipe (``target``, ``int8 layers``, ...) and its calibration."""
    dense_twin: bool | None = None
    """A benchmark twin: the zeros filled, no sparsity claim."""

    @property
    def is_nmrl(self) -> bool:
        return self.format == FORMAT

    @property
    def action_bounds(self) -> tuple[list[float], list[float]] | None:
        if self.action_low is None or self.action_high is None:
            return None
        return self.action_low, self.action_high

    @property
    def quantization_target(self) -> str | None:
        """The runtime an int8 file's recipe was made for (``ort`` / ``tensorrt``)."""
        target = (self.quantization or {}).get("target")
        return target if isinstance(target, str) else None

    def layer_patterns(self) -> dict[str, str]:
        """Weight name -> claimed pattern text (``N:M`` or ``dense``) from ``nmrl.layers``."""
        return {str(entry["weight"]): str(entry.get("pattern", "dense")) for entry in self.layers or []}


KEYS: tuple[str, ...] = tuple(PREFIX + field.name for field in fields(PolicyClaims))
"""Every ``nmrl.*`` key of the schema, in writing order."""


class _HasMetadataProps(Protocol):
    @property
    def metadata_props(self) -> Any: ...


def _encode(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def write_claims(model: _HasMetadataProps, claims: PolicyClaims) -> None:
    """Set the claims that are not None on ``model`` (an ``onnx.ModelProto``), in place: a key the
    model already holds keeps its position and gets the new value, new keys follow in schema order."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for field in fields(claims):
        value = getattr(claims, field.name)
        if value is None:
            continue
        key, text = PREFIX + field.name, _encode(value)
        if key in existing:
            existing[key].value = text
        else:
            model.metadata_props.add(key=key, value=text)


def claims_of(values: Mapping[str, Any]) -> PolicyClaims:
    """:class:`PolicyClaims` from ``{field name: value}`` (a programming error for an unknown name)."""
    return PolicyClaims(**values)


def metadata_of(model: _HasMetadataProps) -> dict[str, str]:
    """A model's ``metadata_props`` as the ``key -> text`` map that :func:`read_claims` reads."""
    return {prop.key: prop.value for prop in model.metadata_props}


def _bad(source: str, key: str, expected: str, text: str) -> NmrlError:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return NmrlError(f"{source}: metadata {key} must be {expected}, got {shown!r}")


def _json(source: str, key: str, text: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # arrays nested deeper than Python's stack: RecursionError
        raise _bad(source, key, expected, text) from None


def _number_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and value != float("inf")


def _layer_entries(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("weight"), str)
        and isinstance(entry.get("pattern", "dense"), str)
        for entry in value
    )


_TEXT = {"format", "version", "sparsity", "env_id", "algo", "trainer", "checkpoint"}
# JSON-valued keys: a check of the decoded value and what it must be, for the error line.
_JSON_CHECKS: dict[str, tuple[Any, str]] = {
    "obs_dim": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "act_dim": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "step": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "pad_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "action_low": (_number_list, "a JSON list of numbers"),
    "action_high": (_number_list, "a JSON list of numbers"),
    "layers": (_layer_entries, 'a JSON list of {"weight": name, "pattern": text, ...}'),
    "config": (lambda v: isinstance(v, dict), "a JSON object"),
    "env_kwargs": (lambda v: isinstance(v, dict), "a JSON object of env settings"),
    "quantization": (lambda v: isinstance(v, dict), "a JSON object"),
    "obs_normalization": (
        lambda v: isinstance(v, dict) and all(_positive_number(v.get(name)) for name in ("clip", "count")),
        'a JSON object {"clip": number > 0, "count": number > 0}',
    ),
    "dense_twin": (lambda v: isinstance(v, bool), "true or false"),
}


def read_value(metadata: Mapping[str, str], name: str, source: str = "policy file") -> Any:
    """The decoded value of ``nmrl.<name>`` (None when absent); :class:`NmrlError` (one line naming
    the key and ``source``) when it is not what the schema says."""
    key = PREFIX + name
    text = metadata.get(key)
    if text is None:
        return None
    if name in _TEXT:
        return text
    if name in ("dtype", "io_dtype"):
        if text not in DTYPES:
            raise _bad(source, key, " or ".join(DTYPES), text)
        return text
    check, expected = _JSON_CHECKS[name]
    value = _json(source, key, text, expected)
    if not check(value):
        raise _bad(source, key, expected, text)
    return value


def read_claims(metadata: Mapping[str, str], source: str = "policy file") -> PolicyClaims:
    """Parse every ``nmrl.*`` key of ``metadata`` (an ONNX model's ``key -> text`` map) into
    :class:`PolicyClaims`. Raises :class:`NmrlError` (one line) on a value that is not what the
    schema says, and when the action bounds do not match each other or ``nmrl.act_dim``."""
    claims = PolicyClaims(**{field.name: read_value(metadata, field.name, source) for field in fields(PolicyClaims)})
    bounds = [b for b in (claims.action_low, claims.action_high) if b is not None]
    if len(bounds) == 1:
        raise NmrlError(f"{source}: metadata has one of nmrl.action_low / nmrl.action_high without the other")
    sizes = {len(b) for b in bounds} | ({claims.act_dim} if claims.act_dim is not None and bounds else set())
    if len(sizes) > 1:
        raise NmrlError(f"{source}: metadata action bounds and nmrl.act_dim disagree in size ({sorted(sizes)})")
    return claims
