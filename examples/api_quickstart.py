"""nmrl from Python in one minute: train a 2:4 TD3 agent, save, load, predict, export to verified ONNX.

    python examples/api_quickstart.py                      # InvertedPendulum-v5, 2:4, about a minute
    python examples/api_quickstart.py --steps 20000 --out runs/quickstart

The run directory it writes is the one `nmrl train` writes, so every verb reads it:

    nmrl eval runs/quickstart
    nmrl inspect runs/quickstart/actor.onnx
    nmrl deploy eval runs/quickstart/actor.onnx
"""

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

import nmrl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--eval-episodes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("nmrl").setLevel(logging.INFO)  # nmrl logs (evaluations, costs); a script shows them
    out = args.out or Path(tempfile.mkdtemp()) / "quickstart"

    # Train: the agent `nmrl train` builds, with SB3's names (learn, predict, save, load, callbacks).
    model = nmrl.TD3(
        args.env, sparsity=args.sparsity, seed=1, learning_starts=args.learning_starts, hidden=tuple(args.hidden)
    )
    evaluation = nmrl.EvalCallback(eval_freq=args.steps // 2, n_eval_episodes=args.eval_episodes)
    model.learn(args.steps, callback=evaluation)
    print(f"trained {model.num_timesteps} steps; evaluation return {evaluation.last_result}")

    # Save a run directory and load it back: the loaded agent continues exactly where it stopped.
    run_dir = model.save(out)
    model = nmrl.TD3.load(run_dir)
    obs, _ = model.env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    print(f"saved {run_dir}; loaded agent's action on a reset state: {np.round(action, 4).tolist()}")

    # Export: the verified ONNX file (N:M claim checked in every GEMM, parity and closed loop vs torch).
    exported = nmrl.export_run(run_dir, episodes=args.eval_episodes)
    print("\n".join(exported.verification.lines()))

    # Deploy: the file runs in ONNX Runtime, no PyTorch needed, and acts as the torch agent did.
    policy = nmrl.load_policy(exported.path, threads=1)
    deployed = policy.act(obs)
    print(f"ONNX Runtime action on the same state: {np.round(deployed, 4).tolist()}")
    print(f"largest difference: {float(np.max(np.abs(deployed - action))):.2e}")
    print(f"files: {run_dir}")


if __name__ == "__main__":
    main()
