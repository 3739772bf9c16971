"""N:M layers inside Stable-Baselines3's TD3 and SAC: train, save, load and export with SB3's own calls.

The sparse model is a policy class of its own, :class:`NMTD3Policy` / :class:`NMSACPolicy`: SB3's
``TD3Policy`` / ``SACPolicy`` whose ``make_actor`` and ``make_critic`` return networks made N:M by
:func:`nmrl.sparsify`, whose ``_build`` binds the actor's and the critics' optimizers to their
networks (:func:`nmrl.bind_optimizer`: masks refreshed after every step, in and out of
``model.learn()``) and keeps the target networks' masks following their Polyak-averaged weights
(:func:`nmrl.bind_target`). SB3 creates the optimizers in ``_build`` after ``make_actor`` /
``make_critic`` and never recreates them (``learn`` only changes their learning rate), so the
hooks stay bound for the model's life.

Because the sparsity is a constructor argument of the policy class, SB3's ``model.save(path)``
records it (``policy_class`` and ``policy_kwargs`` in the zip) and ``TD3.load(path)`` rebuilds the
N:M policy before loading its state dict: shadow weights, masks, mask counters and both Adam
states come back exactly, and training continues N:M. Either make the model sparse from the start::

    TD3(NMTD3Policy, env, policy_kwargs={"sparsity": "2:4"})

or convert one made with ``"MlpPolicy"`` (before or after some training) with :func:`sparsify`.
:func:`export_actor` writes the actor through nmrl's verified ONNX export, so ``nmrl inspect``,
``nmrl deploy eval`` and ``nmrl bench`` take the file as they take one from ``nmrl export``.

Stable-Baselines3 is an optional extra: ``pip install 'nmrl[sb3]'``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity.helpers import as_sparsity, bind_optimizer, bind_target
from nmrl.sparsity.helpers import sparsify as sparsify_module
from nmrl.sparsity.spec import NMSparsity
from nmrl.train.normalization import NormalizedPolicy, ObsNormalization, valid_clip

try:
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.utils import get_parameters_by_name
    from stable_baselines3.common.vec_env import VecNormalize
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy
except ImportError as error:  # pragma: no cover - exercised only where the extra is missing
    raise NmrlError(f"the SB3 integration needs stable-baselines3: pip install 'nmrl[sb3]' ({error})") from None

log = logging.getLogger(__name__)

Net = TypeVar("Net", bound=nn.Module)


@dataclass(frozen=True)
class NMSettings:
    """How an SB3 policy's networks are sparse: the pattern and the N:M layers' training options."""

    sparsity: NMSparsity
    mask_interval: int = 1
    srste_decay: float = 2e-4

    @classmethod
    def parse(cls, sparsity: Any, mask_interval: int, srste_decay: float) -> NMSettings:
        spec = as_sparsity(sparsity)
        if not isinstance(spec, NMSparsity):
            raise NmrlError(
                f"the Stable-Baselines3 integration trains N:M sparsity ('2:4'), not {str(spec)!r}; "
                "unstructured and dense runs are nmrl's own trainers' (nmrl train)"
            )
        return cls(spec, mask_interval, srste_decay)

    def apply(self, network: Net) -> Net:
        sparsify_module(network, self.sparsity, mask_interval=self.mask_interval, srste_decay=self.srste_decay)
        return network

    def kwargs(self) -> dict[str, Any]:
        """The policy-constructor arguments that rebuild these settings (saved in SB3's zip)."""
        return {"sparsity": str(self.sparsity), "mask_interval": self.mask_interval, "srste_decay": self.srste_decay}


def _bind(policy: TD3Policy | SACPolicy) -> None:
    bind_optimizer(policy.actor.optimizer, policy.actor)
    bind_optimizer(policy.critic.optimizer, policy.critic)
    bind_target(policy.critic_target)
    if isinstance(policy, TD3Policy):
        bind_target(policy.actor_target)


class NMTD3Policy(TD3Policy):
    """SB3's TD3 ``MlpPolicy`` with every Linear of the actor, the critics and their targets N:M.

    Args:
        sparsity: the N:M pattern (``"2:4"``, an NMPattern or an NMSparsity).
        mask_interval: recompute the masks every this many optimizer steps.
        srste_decay: SR-STE's decay of the pruned weights.
        *args, **kwargs: as for ``TD3Policy``.
    """

    def __init__(
        self, *args: Any, sparsity: Any = "2:4", mask_interval: int = 1, srste_decay: float = 2e-4, **kwargs: Any
    ) -> None:
        # Set before TD3Policy.__init__, which builds the networks (make_actor, make_critic).
        self.nm = NMSettings.parse(sparsity, mask_interval, srste_decay)
        super().__init__(*args, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> Any:
        return self.nm.apply(super().make_actor(features_extractor))

    def make_critic(self, features_extractor: Any = None) -> Any:
        return self.nm.apply(super().make_critic(features_extractor))

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        _bind(self)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.nm.kwargs()}


class NMSACPolicy(SACPolicy):
    """SB3's SAC ``MlpPolicy`` with every Linear of the actor (mean and log-std heads included),
    the critics and their targets N:M. Arguments as for :class:`NMTD3Policy`."""

    def __init__(
        self, *args: Any, sparsity: Any = "2:4", mask_interval: int = 1, srste_decay: float = 2e-4, **kwargs: Any
    ) -> None:
        self.nm = NMSettings.parse(sparsity, mask_interval, srste_decay)
        super().__init__(*args, **kwargs)
        if self.actor_kwargs["use_sde"]:
            raise NmrlError("NMSACPolicy: use_sde=True is not supported (its exported action is not tanh(mean))")

    def make_actor(self, features_extractor: Any = None) -> Any:
        return self.nm.apply(super().make_actor(features_extractor))

    def make_critic(self, features_extractor: Any = None) -> Any:
        return self.nm.apply(super().make_critic(features_extractor))

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        _bind(self)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.nm.kwargs()}


_NM_POLICIES: dict[type, type] = {TD3Policy: NMTD3Policy, SACPolicy: NMSACPolicy}


def sparsify(
    model: OffPolicyAlgorithm, sparsity: Any = "2:4", *, mask_interval: int = 1, srste_decay: float = 2e-4
) -> OffPolicyAlgorithm:
    """Make an SB3 ``TD3`` or ``SAC`` model built with ``"MlpPolicy"`` N:M, in place, and return it.

    Its policy is rebuilt as :class:`NMTD3Policy` / :class:`NMSACPolicy` with the current weights
    (masks selected from them, targets' from theirs) and the current Adam states, so a model may be
    converted before or after some training; from then on ``learn``, ``save`` and ``TD3.load`` keep
    it N:M. :class:`NmrlError` for other algorithms and policies, or a model already sparse.
    """
    if not isinstance(model, TD3 | SAC):
        raise NmrlError(f"nmrl's SB3 integration sparsifies TD3 and SAC models, not {type(model).__name__}")
    policy = model.policy
    if isinstance(policy, NMTD3Policy | NMSACPolicy):
        raise NmrlError(f"this {type(model).__name__} model is already N:M ({policy.nm.sparsity})")
    nm_class = _NM_POLICIES.get(type(policy))
    if nm_class is None:
        raise NmrlError(f"nmrl's SB3 integration takes models built with 'MlpPolicy', not {type(policy).__name__}")
    settings = NMSettings.parse(sparsity, mask_interval, srste_decay)
    policy_kwargs = {**model.policy_kwargs, **settings.kwargs()}
    sparse = nm_class(model.observation_space, model.action_space, model.lr_schedule, **policy_kwargs)
    sparse = sparse.to(model.device)
    # The dense state dict loads into the N:M policy: weights kept, masks selected from them.
    sparse.load_state_dict(policy.state_dict())
    for name in ("actor", "critic"):
        getattr(sparse, name).optimizer.load_state_dict(getattr(policy, name).optimizer.state_dict())
    sparse.set_training_mode(policy.training)
    model.policy, model.policy_class, model.policy_kwargs = sparse, nm_class, policy_kwargs
    _refresh_aliases(model)
    log.info("%s made %s: %d sparse layers", type(model).__name__, settings.sparsity, _count_sparse(sparse))
    return model


def _refresh_aliases(model: OffPolicyAlgorithm) -> None:
    # What TD3._setup_model / SAC._setup_model derive from the policy after building it.
    model._create_aliases()  # type: ignore[attr-defined]
    if isinstance(model, TD3):
        model.actor_batch_norm_stats = get_parameters_by_name(model.actor, ["running_"])
        model.critic_batch_norm_stats = get_parameters_by_name(model.critic, ["running_"])
        model.actor_batch_norm_stats_target = get_parameters_by_name(model.actor_target, ["running_"])
        model.critic_batch_norm_stats_target = get_parameters_by_name(model.critic_target, ["running_"])
    elif isinstance(model, SAC):
        model.batch_norm_stats = get_parameters_by_name(model.critic, ["running_"])
        model.batch_norm_stats_target = get_parameters_by_name(model.critic_target, ["running_"])


def _count_sparse(policy: nn.Module) -> int:
    from nmrl.sparsity.layers import masked_layers

    return len(masked_layers(policy))


class DeployedActor(nn.Module):
    """An SB3 actor as the policy nmrl exports: observation -> action in the env's units
    (SB3's ``predict`` without its numpy wrapping): TD3's ``mu`` ends in tanh; SAC's deterministic
    action is ``tanh(mu(latent))``; both rescaled from (-1, 1) to the action bounds as SB3's
    ``unscale_action`` does."""

    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(self, actor: nn.Module, action_low: np.ndarray, action_high: np.ndarray, gaussian: bool) -> None:
        super().__init__()
        self.actor, self.gaussian = actor, gaussian
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        actor: Any = self.actor
        features = actor.extract_features(obs, actor.features_extractor)
        squashed = torch.tanh(actor.mu(actor.latent_pi(features))) if self.gaussian else actor.mu(features)
        return squashed * self.action_scale + self.action_bias


def deployed_actor(model: OffPolicyAlgorithm) -> DeployedActor:
    """The deterministic policy of an SB3 TD3/SAC model as a module (shares the model's layers)."""
    if not isinstance(model, TD3 | SAC):
        raise NmrlError(f"nmrl exports SB3 TD3 and SAC actors, not {type(model).__name__}")
    space = model.action_space
    obs_space = model.observation_space
    if len(space.shape or ()) != 1 or len(obs_space.shape or ()) != 1:
        raise NmrlError("nmrl exports actors with a flat Box observation and a flat Box action")
    low, high = np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32)  # type: ignore[attr-defined]
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise NmrlError("nmrl exports actors of bounded action spaces only (SB3 squashes actions with tanh)")
    return DeployedActor(model.actor, low, high, gaussian=isinstance(model, SAC))


def obs_normalization(model: OffPolicyAlgorithm, vec_normalize: VecNormalize | None = None) -> ObsNormalization | None:
    """The observation normalisation of ``vec_normalize`` (else the model's own ``VecNormalize``
    wrapper, if it has one) as a frozen module: ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs,
    clip_obs)``, SB3's rule with its statistics as they are now, in float32. None when there is no
    ``VecNormalize`` or it does not normalise observations; :class:`NmrlError` for statistics nmrl
    cannot carry into a graph (dict observations, another width, an infinite ``clip_obs``)."""
    venv = vec_normalize if vec_normalize is not None else model.get_vec_normalize_env()
    if venv is None or not venv.norm_obs:
        return None
    if not isinstance(venv.obs_rms, RunningMeanStd):
        raise NmrlError("nmrl exports VecNormalize statistics of a flat Box observation, not of dict observations")
    obs_dim = int(model.observation_space.shape[0])
    mean, var = np.asarray(venv.obs_rms.mean, np.float64), np.asarray(venv.obs_rms.var, np.float64)
    if mean.shape != (obs_dim,) or var.shape != (obs_dim,):
        raise NmrlError(f"the VecNormalize statistics are of width {mean.shape}, the model's observations {obs_dim}")
    if not valid_clip(float(venv.clip_obs)):
        raise NmrlError(f"a policy file needs a finite positive VecNormalize clip_obs, not {venv.clip_obs}")
    std = np.sqrt(var + venv.epsilon)
    return ObsNormalization(
        torch.from_numpy(mean.astype(np.float32)),
        torch.from_numpy(std.astype(np.float32)),
        float(venv.clip_obs),
        float(venv.obs_rms.count),
    )


def _env_id(model: OffPolicyAlgorithm) -> str | None:
    env = model.get_env()
    if env is None:
        return None
    spec = env.get_attr("spec")[0]
    return getattr(spec, "id", None)


def export_actor(
    model: OffPolicyAlgorithm,
    path: Path | str,
    env_id: str | None = None,
    episodes: int | None = None,
    parity_samples: int = 256,
    allow_worse_return: bool = False,
    vec_normalize: VecNormalize | None = None,
) -> Any:
    """Write the actor of an SB3 TD3/SAC model to ``path`` as a verified fp32 ONNX file.

    A model trained inside ``VecNormalize`` acts on normalised observations: its statistics (the
    ``vec_normalize`` given, else the model's own wrapper, :func:`obs_normalization`) go into the
    graph as the ``Sub``/``Div``/``Clip`` of ``nmrl train --normalize-obs``, so the file takes raw
    observations, and the checks below run on raw ones. SB3 saves ``VecNormalize`` apart from the
    model (``vec_normalize.save(path)``): a model loaded without its env has no wrapper, so pass
    ``vec_normalize=VecNormalize.load(path, venv)``, or the file expects normalised observations.

    The same checks as ``nmrl export`` (:func:`nmrl.export.onnx_export.build_policy_onnx` and
    :func:`nmrl.export.parity.verify_export`): every GEMM weight holds the policy's N:M pattern
    (an N:M model; a dense one claims none), the file acts as the torch actor on its own episodes,
    on env states and on wide random inputs, and its closed-loop return matches. Nothing is
    written when a check fails (:class:`NmrlError`). ``env_id`` defaults to the model's env's id
    (without one, only the random-input parity runs). Returns the
    :class:`~nmrl.export.pipeline.RunExport`.
    """
    import stable_baselines3

    from nmrl.deploy.ort_backend import OrtPolicy
    from nmrl.deploy.torch_backend import TorchPolicy
    from nmrl.export.onnx_export import build_policy_onnx, save_onnx
    from nmrl.export.parity import CHECK_EPISODES, RETURN_MARGIN, enforce, verify_export
    from nmrl.export.pipeline import RunExport, obs_normalization_claim

    actor = deployed_actor(model)
    normalization = obs_normalization(model, vec_normalize)
    policy: nn.Module = actor if normalization is None else NormalizedPolicy(normalization, actor)
    env_id = env_id or _env_id(model)
    settings: NMSettings | None = getattr(model.policy, "nm", None)
    claimed = settings.sparsity.pattern if settings is not None else None
    obs_dim = int(model.observation_space.shape[0])  # type: ignore[index]
    act_dim = int(model.action_space.shape[0])  # type: ignore[index]
    action_low = [float(x) for x in actor.action_bias - actor.action_scale]
    action_high = [float(x) for x in actor.action_bias + actor.action_scale]
    metadata = {
        "env_id": env_id,
        "action_low": action_low,
        "action_high": action_high,
        "algo": f"sb3-{type(model).__name__.lower()}",
        "step": int(model.num_timesteps),
        "trainer": f"stable-baselines3 {stable_baselines3.__version__}",
        **({"obs_normalization": obs_normalization_claim(policy)} if isinstance(policy, NormalizedPolicy) else {}),
    }
    onnx_model, check = build_policy_onnx(policy, obs_dim, act_dim, claimed, metadata)
    verification = verify_export(
        TorchPolicy(policy, obs_dim, act_dim, threads=None, env_id=env_id),
        OrtPolicy(onnx_model.SerializeToString()),
        "fp32",
        env_id,
        action_low,
        action_high,
        episodes=CHECK_EPISODES if episodes is None else episodes,
        margin=RETURN_MARGIN,
        random_count=parity_samples,
    )
    warnings = enforce(verification, allow_worse_return)
    path = Path(path)
    save_onnx(onnx_model, path)
    check.path = path
    return RunExport(path, check, verification, warnings=warnings)
