"""The Gymnasium environment factory shared by training and deployment.

An id of the form ``module:EnvName`` makes ``gymnasium.make`` import ``module`` first, which runs
that module's code. Such an id is fine when the user types it; read from a file (ONNX metadata,
a run's config.json) it would let the file choose code to run. So every id that comes from a file
passes :func:`env_id_from_file`, which accepts a module-qualified id only when the user confirmed
that very id on the command line (``--env``, recorded with :func:`confirm_env_id`).

An env's settings (``--env-kwargs``, a JSON object passed to ``gymnasium.make``) travel with its id:
in a run's ``config.json`` and in the exported file's ``nmrl.env_kwargs``, so every later step
(evaluation, export's closed-loop check, deployment) runs the env the policy was trained on.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gymnasium as gym
import numpy as np

from nmrl.errors import NmrlError

logger = logging.getLogger(__name__)

_CONFIRMED_ENV_IDS: set[str] = set()

QUIET_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)
"""MuJoCo warnings about Gymnasium's own model files, not the user's doing (HalfCheetah's XML still
uses ``settotalmass``): dropped. Every other MuJoCo warning goes to this module's logger."""


def _mujoco_warning(message: str) -> None:
    if not message.startswith(QUIET_MUJOCO_WARNINGS):
        logger.warning("MuJoCo: %s", message.strip())


def _route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to :func:`_mujoco_warning`, unless the program set its own handler.

    MuJoCo's default handler prints each warning and appends it to ``MUJOCO_LOG.TXT`` in the
    working directory: a file the user never asked for, once per env a run makes.
    """
    try:
        import mujoco
    except ImportError:  # no MuJoCo here: nothing to quiet
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def imported_module(env_id: str) -> str | None:
    """The module ``gymnasium.make(env_id)`` would import (the part before ':'), or None."""
    module, colon, _ = env_id.partition(":")
    return module if colon else None


def confirm_env_id(env_id: str) -> None:
    """Record that the user named ``env_id`` on this process's command line, so a file naming the
    same id may use it (its module included)."""
    if env_id:
        _CONFIRMED_ENV_IDS.add(env_id)


def env_id_from_file(env_id: object, source: object) -> str:
    """Check an environment id read from ``source`` (a file) before anything makes it.

    Raises :class:`NmrlError` when it is not a string, or names a module to import that the user
    did not confirm with ``--env``.
    """
    if not isinstance(env_id, str) or not env_id.strip():
        raise NmrlError(f"{source}: names no valid environment id ({env_id!r})")
    module = imported_module(env_id)
    if module is not None and env_id not in _CONFIRMED_ENV_IDS:
        raise NmrlError(
            f"{source} names the environment {env_id!r}, which would import the Python module {module!r}; "
            f"nmrl imports a module named by a file only when you give the id yourself: add --env {env_id}"
        )
    return env_id


def parse_env_kwargs(text: str) -> dict[str, Any]:
    """``--env-kwargs``: a JSON object of keyword arguments for the env (``''``: none).

    Raises :class:`NmrlError` for text that is not a JSON object (NaN and Infinity included: no
    env setting means them). Whether the env takes these keys and values, :func:`make_env` checks.
    """
    if not text.strip():
        return {}

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except ValueError as error:  # json.JSONDecodeError included
        raise NmrlError(f"--env-kwargs is not valid JSON ({error}): {text}") from None
    if not isinstance(value, dict):
        raise NmrlError(f"--env-kwargs must be a JSON object such as '{{\"ctrl_cost_weight\": 0.05}}', got {text}")
    return value


def describe_env(env_id: str, kwargs: dict[str, Any] | None) -> str:
    """``env_id``, with its settings when it has any: how nmrl names an env to the user."""
    return f"{env_id} {json.dumps(kwargs, sort_keys=True)}" if kwargs else env_id


# (env id, settings) pairs that made an env and ran one step: checked once per process.
_CHECKED_KWARGS: set[tuple[str, str]] = set()


def _make_with_kwargs(env_id: str, kwargs: dict[str, Any], rendering: dict[str, Any]) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, where an env refusing a setting (an unknown key, a
    value of the wrong type or range) is the user's mistake: one :class:`NmrlError` naming it. A
    bad value often passes the constructor and fails at the first step, so the first make of each
    (id, settings) pair also resets and steps a throwaway copy."""
    given = json.dumps(kwargs, sort_keys=True)
    try:
        env = gym.make(env_id, **kwargs, **rendering)
        if (env_id, given) not in _CHECKED_KWARGS:
            probe = gym.make(env_id, **kwargs)
            try:
                probe.reset(seed=0)
                if isinstance(probe.action_space, gym.spaces.Box):
                    probe.step(probe.action_space.sample())
            finally:
                probe.close()
            _CHECKED_KWARGS.add((env_id, given))
    except gym.error.Error:
        raise
    except Exception as error:
        known = env_settings(env_id)
        unknown = sorted(set(kwargs) - set(known)) if known is not None else []
        if isinstance(error, TypeError) and known is not None and unknown:
            raise NmrlError(
                f"--env-kwargs: {env_id} has no setting {', '.join(map(repr, unknown))}; it takes {', '.join(known)}"
            ) from None
        detail = " ".join(str(error).split()) or type(error).__name__
        raise NmrlError(f"{env_id} refused --env-kwargs {given}: {type(error).__name__}: {detail}") from None
    return env


def env_settings(env_id: str) -> list[str] | None:
    """The keyword arguments ``env_id``'s class takes (through each ``**kwargs`` it passes to its
    base class), or None when they cannot be known (a factory function, a wrapper taking ``**kwargs``)."""
    import inspect

    try:
        entry_point = gym.spec(env_id.rpartition(":")[2]).entry_point  # "module:EnvId": imported by now
        creator = gym.envs.registration.load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except Exception:  # the id or its module is the problem: gymnasium.make says so itself
        return None
    names: list[str] = []
    classes: tuple[type, ...] = creator.__mro__ if isinstance(creator, type) else ()
    for cls in classes:
        if "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(vars(cls)["__init__"]).parameters.values())[1:]  # [0]: self
        names += [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return sorted(set(names))
    return None


def make_env(
    env_id: str, seed: int | None = None, kwargs: dict[str, Any] | None = None, render_mode: str | None = None
) -> gym.Env:
    """Make a Gymnasium env with a flat Box observation and a bounded Box action space.

    ``seed`` seeds the first reset and the action space; ``kwargs`` (``--env-kwargs``) go to
    ``gymnasium.make``, as ``render_mode`` does (``"rgb_array"`` for ``--capture-video``). Raises
    :class:`NmrlError` for an unknown id, a missing simulator, settings the env refuses, or spaces
    nmrl's continuous-control agents cannot drive.
    """
    _route_mujoco_warnings()
    rendering: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}
    try:
        env = _make_with_kwargs(env_id, kwargs, rendering) if kwargs else gym.make(env_id, **rendering)
    except gym.error.Error as error:
        raise NmrlError(f"cannot make environment {env_id!r}: {error}") from None
    try:
        return check_env(env, env_id, seed)
    except NmrlError:
        env.close()
        raise


def check_env(env: gym.Env, name: str, seed: int | None = None) -> gym.Env:
    """``env`` (made by :func:`make_env` or given by a user), once its spaces are checked: a flat
    Box observation and a bounded 1-D Box action. ``name`` names it in errors; ``seed`` seeds its
    first reset and its action space."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise NmrlError(f"{name}: nmrl needs a 1-D Box action space, got {act_space}")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise NmrlError(f"{name}: the action space must be bounded, got {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise NmrlError(f"{name}: nmrl needs a flat 1-D Box observation space, got {obs_space}")
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_dims(env: gym.Env) -> tuple[int, int, list[float], list[float]]:
    """(obs_dim, act_dim, action_low, action_high) of an env made by :func:`make_env`."""
    obs_space, act_space = env.observation_space, env.action_space
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)  # make_env checked
    return (
        int(obs_space.shape[0]),
        int(act_space.shape[0]),
        [float(x) for x in act_space.low],
        [float(x) for x in act_space.high],
    )
