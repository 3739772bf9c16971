"""The ``nmrl train`` and ``nmrl eval`` verbs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro

from nmrl.errors import NmrlError
from nmrl.train.config import TrainConfig
from nmrl.train.tracking import NO_TRACKING, TrackingOptions

CONFIG_FLAG = "--config"


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value given to ``flag`` on a command line (``--flag VALUE`` or ``--flag=VALUE``; the
    last one counts, as for tyro), or None when it is absent or has no value (tyro then says so)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def train_defaults(args: list[str]) -> dict[str, Any]:
    """What ``nmrl train`` reads off its command line before tyro parses it: with ``--config
    FILE`` (a run's ``config.json``, or its run directory), that run's settings as the defaults of
    every flag, so the run is repeated and flags given beside it override; {} without --config.

    The saved run name is dropped (a repeat is a new run directory, named by default unless
    --run-name is given), and a ``module:Env`` id in the file is used only when --env names it too
    (nmrl never imports a module named only by a file).
    """
    from nmrl.envs import confirm_env_id, env_id_from_file
    from nmrl.train.rundir import CONFIG_FILE

    given = _flag_value(args, CONFIG_FLAG)
    if given is None:
        return {}
    path = Path(given)
    if path.is_dir():
        path = path / CONFIG_FILE
    saved = TrainConfig.load(path)
    env = _flag_value(args, "--env")
    if env is None:
        env_id_from_file(saved.env, path)
    else:
        confirm_env_id(env)
    return {"config": saved.with_settings(run_name="")}


def train(
    config: Annotated[TrainConfig, tyro.conf.arg(name="")],
    resume: Path | None = None,
    config_file: Annotated[Path | None, tyro.conf.arg(name="config")] = None,
    tracking: Annotated[TrackingOptions, tyro.conf.OmitArgPrefixes] = NO_TRACKING,
) -> None:
    """Train an agent. Every network is N:M sparse (--sparsity 2:4, the default) or dense.

    With --config runs/<run>/config.json, repeats that run in a new run directory: its saved
    settings are the defaults and any flag given beside --config overrides them (--seed 2 trains
    the same setup on another seed). --track logs the run to Weights & Biases too (the
    track extra; WANDB_MODE=offline keeps it in RUN/wandb/); it is not a setting of the run, so a
    repeat or a resume tracks only when given --track again.

    With --resume RUN_DIR, continues that run from its last checkpoint with its saved config
    (only --total-steps may be given again, to extend or shorten it); other options are then ignored,
    and named in a notice, except --env, which must be the run's and confirms a 'module:Env' id saved
    in the run (nmrl never imports a module named only by a file).

    Args:
        resume: a run directory to continue from its checkpoints/last.pt.
        config_file: a run's config.json (or its run directory) to repeat: its settings are the
            defaults of every flag (the run name aside: the new run gets its own directory).
    """
    from nmrl.envs import confirm_env_id
    from nmrl.train.loop import resume as resume_run
    from nmrl.train.loop import train as train_run

    if resume is not None and config_file is not None:
        raise NmrlError(
            "--resume continues a run with its own config; --config starts a new run from one: give one of them"
        )
    if resume is not None:
        defaults = TrainConfig()
        given = config.env if config.env != defaults.env else None
        if given is not None:
            confirm_env_id(given)
        ignored = [
            f"--{name.replace('_', '-')}"
            for name, value in config.flat_settings().items()
            if name not in ("env", "total_steps") and value != defaults.flat_settings()[name]
        ]
        if ignored:  # a flag that changes nothing must say so
            print(f"--resume keeps the run's saved settings; ignored: {', '.join(ignored)}", file=sys.stderr)
        extend = config.total_steps if config.total_steps != defaults.total_steps else None
        run_dir = resume_run(resume, total_steps=extend, env=given, tracking=tracking)
    else:
        run_dir = train_run(config, tracking)
    print(f"run directory: {run_dir}")


def evaluate(
    run_dir: Annotated[Path, tyro.conf.Positional],
    episodes: int = 10,
    checkpoint: Literal["last", "best"] = "last",
    seed: int = 0,
    env: str = "",
    env_kwargs: str = "",
    capture_video: bool = False,
) -> None:
    """Deterministic evaluation (no exploration noise) of a run's checkpoint, in the env settings
    it was trained with (its config's env_kwargs).

    Args:
        run_dir: the run directory (runs/<run>).
        episodes: episodes to run; episode i starts from seed + i.
        checkpoint: 'last' (newest) or 'best' (best evaluation during training).
        seed: seed of the first episode.
        env: confirms a 'module:Env' id saved in the run (nmrl never imports a module named only
            by a file); must be the run's env.
        env_kwargs: other env settings to evaluate under, a JSON object ('': the run's own).
        capture_video: write the first episode as an MP4 to RUN/videos/<checkpoint>-seed<SEED>.mp4,
            rendered offscreen (needs the video extra; without a display MuJoCo draws through EGL).
    """
    from nmrl.envs import confirm_env_id, describe_env, parse_env_kwargs
    from nmrl.train.evaluate import evaluate as run_episodes
    from nmrl.train.evaluate import video_path
    from nmrl.train.run import load_trained_actor

    if episodes < 1:
        raise NmrlError(f"--episodes must be at least 1, got {episodes}")
    confirm_env_id(env)
    settings = parse_env_kwargs(env_kwargs) if env_kwargs.strip() else None
    loaded = load_trained_actor(run_dir, checkpoint)
    if settings is None:
        settings = loaded.config.env_kwargs
    if env and env != loaded.env_id:
        raise NmrlError(f"--env {env} is not this run's environment ({loaded.env_id})")

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded.policy(torch.as_tensor(obs).unsqueeze(0))[0].numpy()

    video = video_path(run_dir, checkpoint, seed) if capture_video else None
    result = run_episodes(act, loaded.env_id, episodes, seed, settings, video=video)
    print(
        f"{describe_env(loaded.env_id, settings)}  {loaded.config.algo} {loaded.config.sparsity}  "
        f"{checkpoint} checkpoint (step {loaded.step:,})"
    )
    print(result.report(seed))
    print("returns: " + ", ".join(f"{r:.1f}" for r in result.returns))
    if video is not None:
        print(f"video of episode 1 (seed {seed}, {result.lengths[0] + 1} frames): {video}")
