"""Does the exported file act as the torch policy acts? One verification for every precision.

Three checks, run before anything is written, on two deployed policies (:class:`~nmrl.deploy.policy.Policy`):
the file as its backend runs it (the ONNX model in memory under ONNX Runtime, or any other backend's
loader) against the torch fp32 policy. Parity runs nothing of its own: what it compares is what
``nmrl deploy eval`` would run.

1. **On-policy parity** (blocking). Observations from the torch policy's own deterministic episodes
   in its environment (the states a deployed policy visits), plus states of a random-action rollout
   (the first states a policy sees, and states off its usual path). The error of an action is
   measured relative to that action's range ``high - low``: 1e-3 of the range is the same control
   error whatever the env's units, and a near-zero action in the batch cannot inflate it.
2. **Wide random inputs** (reported, never blocking). Gaussian observations at 3x unit scale drive
   every unit, including ones a trained policy never uses; reduced precision may differ there
   without mattering to the policy, so they inform but cannot by themselves refuse an export.
3. **Closed loop** (blocking beyond a margin). The file and the torch policy run the same seeded
   episodes; both mean returns are reported with the 95% confidence interval of the per-episode
   differences. Returns are not expected to be identical: a 1e-6 action difference grows over a
   chaotic 1000-step rollout, so equal seeds give different trajectories. A file is refused when its
   return falls below the torch policy's by more than the margin (a fraction of |torch return|) and by
   more than that interval (a shortfall that is both large and not noise), unless the user allows it.

Tolerances (fraction of the action range, max over the on-policy states); see docs/deploy.md for the
numbers measured on trained policies:

- fp32: 1e-4. Weights are bit-identical; only summation order and fused kernels differ between ONNX
  Runtime and torch, an error of ~eps32 (1.2e-7) x sum|w x| per layer, i.e. 1e-6..1e-5 of the range
  for trained actors whose pre-activations reach 10-100. 1e-4 leaves headroom for larger weights after
  long training while still catching any real difference (a wrong weight moves actions by percents).
- fp16: 2e-2. Every weight and activation is rounded to 11 significant bits (eps16 = 9.8e-4, unit
  roundoff 4.9e-4): each layer adds ~4.9e-4 x |pre-activation| of error, and the three layers of an
  actor with pre-activations of tens compound it to ~1e-2 of the range before tanh damps it. 2e-2 is
  ~20 eps16: it passes trained policies and refuses a wrong file (a flipped or dropped layer).
- int8: 0.1, on the MEAN over the on-policy states (of each state's largest action error), not the
  max. Weights are rounded to per-channel steps of max|w|/127 (7-bit: /64 for the ``ort`` recipe) and
  each layer's input to a per-tensor step set by calibration (1/255 of the tensor's range for
  unsigned activations): a pre-activation sums K half-step errors, ~sqrt(K)/2 steps, and three
  layers compound them. Typical states stay near 1% of the range, but a trained 256-256 actor has
  rare states near a decision boundary where a pre-tanh error of one step turns the action by tens
  of percents: on a 90k-step HalfCheetah 2:4 policy the worst of 10000 visited states was off by
  0.33-0.63 of the range (int8 recipes of then and now) while its int8 files scored 3607-3928 vs
  torch's 3617 over the same 10 episodes. The worst state of int8 is not a control verdict, so it
  is reported, and the mean is what blocks. Measured means: trained policies 0.001-0.023 with
  either recipe (the four policies of docs/deploy.md), up to 0.048 with an earlier form of the
  ``ort`` recipe; broken calibrations 0.2-0.5 (observations x1000, x0.5, or random-action states
  only, on policies where they break it); 0.1 leaves 2x room on both sides. The closed-loop check
  decides whether the int8 policy still acts well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError
from nmrl.export.observations import env_observations, random_observations


@dataclass(frozen=True)
class Tolerance:
    """The on-policy action error a precision may show, as a fraction of the action range: the
    largest over the states (``statistic="max"``) or the mean over them of each state's largest."""

    precision: str
    range_fraction: float
    eps: float
    """The format's resolution the tolerance is derived from (machine epsilon, or 1/127 for int8)."""
    statistic: Literal["max", "mean"] = "max"


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("fp32", 1e-4, 1.2e-7),
    "fp16": Tolerance("fp16", 2e-2, 9.8e-4),
    "int8": Tolerance("int8", 0.1, 1 / 127, "mean"),
}
RETURN_MARGIN = 0.05
"""Default closed-loop margin: the file may score at most this fraction of |torch return| lower."""
CHECK_EPISODES = 3
"""Default closed-loop episodes (each also supplies on-policy states for parity)."""
CHECK_SEED = 0

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (then the normal 1.96).
_T95 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228),
    *(2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086),
    *(2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)


def t95(dof: int) -> float:
    """The two-sided 95% Student t quantile for ``dof`` degrees of freedom."""
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise NmrlError(f"no parity tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[precision]


# ------------------------------------------------------------------------------------------
# Parity


@dataclass(frozen=True)
class ParityResult:
    """Largest action difference between the file and torch over ``count`` observations."""

    source: str
    """policy (its own deterministic episodes), env (random-action rollout) or random (wide Gaussian)."""
    count: int
    max_abs_error: float
    max_range_error: float
    """max over observations and actions of |error| / (high - low) of that action."""
    precision: str
    blocking: bool
    """Whether failing this check refuses the export (wide random inputs are only reported)."""
    mean_range_error: float = 0.0
    """mean over observations of each observation's largest |error| / (high - low)."""

    @property
    def tolerance(self) -> float:
        return tolerance_for(self.precision).range_fraction

    @property
    def judged_error(self) -> float:
        """The statistic the precision's tolerance bounds."""
        return self.mean_range_error if tolerance_for(self.precision).statistic == "mean" else self.max_range_error

    @property
    def passed(self) -> bool:
        return self.judged_error <= self.tolerance

    def __str__(self) -> str:
        verdict = ("ok" if self.passed else "FAILED") if self.blocking else ("within" if self.passed else "above")
        note = "" if self.blocking else ", reported only"
        on_mean = tolerance_for(self.precision).statistic == "mean"
        mean = f", mean {self.mean_range_error:.2e}" if on_mean else ""
        return (
            f"{self.source:<6} {self.count:>5} obs: max abs error {self.max_abs_error:.2e}, "
            f"{self.max_range_error:.2e} of the action range{mean} ({self.precision} tolerance "
            f"{'on the mean ' if on_mean else ''}{self.tolerance:g}: {verdict}{note})"
        )


def action_range(action_low: list[float] | None, action_high: list[float] | None, act_dim: int) -> np.ndarray:
    """``high - low`` per action; 2 (the [-1, 1] range of an unscaled tanh) when bounds are unknown
    or infinite."""
    if action_low is None or action_high is None:
        return np.full(act_dim, 2.0)
    span = np.asarray(action_high, dtype=np.float64) - np.asarray(action_low, dtype=np.float64)
    return np.where(np.isfinite(span) & (span > 0), span, 2.0)


def actions(policy: Policy, observations: np.ndarray) -> np.ndarray:
    """``policy``'s actions for a batch, in float64 (errors are measured without float32 rounding)."""
    return np.asarray(policy.act(observations), dtype=np.float64)


def measure_parity(
    reference: Policy,
    candidate: Policy,
    observations: np.ndarray,
    span: np.ndarray,
    precision: str,
    source: str,
    blocking: bool = True,
) -> ParityResult:
    """Run ``observations`` through both policies and measure the largest action difference."""
    error = np.abs(actions(candidate, observations) - actions(reference, observations))
    per_state = (error / span).max(axis=1)
    return ParityResult(
        source,
        len(observations),
        float(error.max()),
        float(per_state.max()),
        precision,
        blocking,
        float(per_state.mean()),
    )


# ------------------------------------------------------------------------------------------
# Closed loop


@dataclass(frozen=True)
class ClosedLoopResult:
    """The torch policy and the file on the same seeded episodes."""

    env_id: str
    seed: int
    reference_returns: tuple[float, ...]
    file_returns: tuple[float, ...]
    precision: str
    margin: float
    reference_lengths: tuple[int, ...] = ()
    file_lengths: tuple[int, ...] = ()

    @property
    def episodes(self) -> int:
        return len(self.reference_returns)

    @property
    def reference_mean(self) -> float:
        return float(np.mean(self.reference_returns))

    @property
    def file_mean(self) -> float:
        return float(np.mean(self.file_returns))

    @property
    def difference(self) -> float:
        """Mean of the per-episode differences file - torch (negative: the file scores lower)."""
        return self.file_mean - self.reference_mean

    @property
    def interval(self) -> float:
        """Half-width of the 95% confidence interval of the mean paired difference (0 for 1 episode)."""
        n = self.episodes
        if n < 2:
            return 0.0
        diffs = np.subtract(self.file_returns, self.reference_returns)
        return t95(n - 1) * float(np.std(diffs, ddof=1)) / math.sqrt(n)

    @property
    def allowed_shortfall(self) -> float:
        return self.margin * abs(self.reference_mean)

    @property
    def passed(self) -> bool:
        shortfall = -self.difference
        return not (shortfall > self.allowed_shortfall and shortfall > self.interval)

    def summary_lines(self) -> tuple[str, str]:
        """What ran and what each side scored; the difference and the verdict."""

        def summary(returns: tuple[float, ...]) -> str:
            return f"{np.mean(returns):.1f} ± {np.std(returns):.1f}"

        last_seed = self.seed + self.episodes - 1
        return (
            f"{self.env_id}, {self.episodes} episodes (seeds {self.seed}..{last_seed}): "
            f"torch fp32 {summary(self.reference_returns)}, file {summary(self.file_returns)}",
            f"difference {self.difference:+.1f} (95% CI ± {self.interval:.1f}); refused below "
            f"-{self.allowed_shortfall:.1f} ({self.margin:.0%} of |torch|) beyond the CI: "
            + ("ok" if self.passed else "FAILED"),
        )

    def __str__(self) -> str:
        return "; ".join(self.summary_lines())


def closed_loop(
    reference: Policy,
    candidate: Policy,
    env_id: str,
    episodes: int,
    seed: int,
    precision: str,
    margin: float,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[ClosedLoopResult, np.ndarray]:
    """Both policies on episodes ``seed .. seed + episodes - 1``; also returns the observations the
    torch policy visited (the on-policy states for parity)."""
    from nmrl.train.evaluate import evaluate

    visited: list[np.ndarray] = []

    def reference_step(obs: np.ndarray) -> np.ndarray:
        visited.append(obs)
        return reference.act(obs)

    torch_result = evaluate(reference_step, env_id, episodes, seed, env_kwargs)
    file_result = evaluate(candidate.act, env_id, episodes, seed, env_kwargs)
    result = ClosedLoopResult(
        env_id,
        seed,
        tuple(torch_result.returns),
        tuple(file_result.returns),
        precision,
        margin,
        tuple(torch_result.lengths),
        tuple(file_result.lengths),
    )
    return result, np.stack(visited).astype(np.float32)


# ------------------------------------------------------------------------------------------
# The verification


@dataclass(frozen=True)
class Verification:
    """Everything one export checked, and whether the file may be written."""

    parity: tuple[ParityResult, ...]
    closed_loop: ClosedLoopResult | None
    reference: str = "torch fp32"
    candidate: str = "the file under ONNX Runtime"
    """What ran each side (:meth:`Policy.describe`)."""

    @property
    def parity_failures(self) -> list[ParityResult]:
        return [result for result in self.parity if result.blocking and not result.passed]

    def lines(self) -> list[str]:
        lines = [f"parity ({self.candidate} vs {self.reference}):", *(f"  {result}" for result in self.parity)]
        if self.closed_loop is not None:
            lines.append(f"closed loop (same seeds, {self.reference} vs {self.candidate}):")
            lines += [f"  {line}" for line in self.closed_loop.summary_lines()]
        return lines


def verify_export(
    reference: Policy,
    candidate: Policy,
    precision: str,
    env_id: str | None,
    action_low: list[float] | None = None,
    action_high: list[float] | None = None,
    episodes: int = CHECK_EPISODES,
    seed: int = CHECK_SEED,
    margin: float = RETURN_MARGIN,
    random_count: int = 256,
    env_kwargs: dict[str, Any] | None = None,
) -> Verification:
    """Run the three checks of this module on two deployed policies (closed loop and env states only
    when ``env_id`` is known, the env made with ``env_kwargs``, the run's ``--env-kwargs``):
    ``candidate`` (the file, as a backend runs it, e.g. :class:`~nmrl.deploy.ort_backend.OrtPolicy`
    of the serialized model) against ``reference`` (the torch fp32 policy,
    :class:`~nmrl.deploy.torch_backend.TorchPolicy`).

    Returns the :class:`Verification`; :func:`enforce` decides whether it refuses the export.
    """
    tolerance_for(precision)
    check_closed_loop_settings(episodes, margin)
    if (candidate.obs_dim, candidate.act_dim) != (reference.obs_dim, reference.act_dim):
        raise NmrlError(
            f"cannot compare policies of different sizes: obs {candidate.obs_dim} -> act {candidate.act_dim} "
            f"vs obs {reference.obs_dim} -> act {reference.act_dim}"
        )
    span = action_range(action_low, action_high, reference.act_dim)
    results: list[ParityResult] = []
    loop = None
    if env_id:
        loop, visited = closed_loop(reference, candidate, env_id, episodes, seed, precision, margin, env_kwargs)
        results.append(measure_parity(reference, candidate, visited, span, precision, "policy"))
        results.append(
            measure_parity(
                reference, candidate, env_observations(env_id, 256, seed, env_kwargs), span, precision, "env"
            )
        )
    wide = random_observations(reference.obs_dim, random_count, seed)
    results.append(measure_parity(reference, candidate, wide, span, precision, "random", blocking=env_id is None))
    return Verification(tuple(results), loop, reference.describe(), candidate.describe())


def check_closed_loop_settings(episodes: int, margin: float) -> None:
    """:class:`NmrlError` unless the closed-loop check can refuse something: at least one episode,
    and a finite margin in [0, 1] (NaN compares false with every shortfall, so ``--return-margin nan``
    once passed every file; a margin past 1 accepts a return of the opposite sign)."""
    if episodes < 1:
        raise NmrlError(f"the closed-loop check needs at least 1 episode, got {episodes}")
    if not (math.isfinite(margin) and 0 <= margin <= 1):
        raise NmrlError(f"--return-margin must be a fraction between 0 and 1, got {margin}")


def enforce(verification: Verification, allow_worse_return: bool = False) -> list[str]:
    """Raise :class:`NmrlError` (one line) when on-policy parity fails, or when the closed-loop return
    falls short beyond the margin and ``allow_worse_return`` is not set. Returns warnings to print."""
    failed = verification.parity_failures
    if failed:
        raise NmrlError("refusing to export: the file does not act as the torch policy: " + "; ".join(map(str, failed)))
    loop = verification.closed_loop
    if loop is not None and not loop.passed:
        if not allow_worse_return:
            raise NmrlError(
                f"refusing to export: closed-loop return {loop.file_mean:.1f} vs torch {loop.reference_mean:.1f} "
                f"({loop.difference:+.1f}, beyond the {loop.margin:.0%} margin and the 95% CI ± {loop.interval:.1f}); "
                "pass --allow-worse-return to write it anyway"
            )
        return [
            f"warning: written although its closed-loop return is {-loop.difference:.1f} below torch's "
            "(--allow-worse-return)"
        ]
    return []
