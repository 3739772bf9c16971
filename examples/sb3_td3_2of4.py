"""Stable-Baselines3's TD3 with every layer 2:4 sparse: learn, save, TD3.load, export to verified ONNX.

    python examples/sb3_td3_2of4.py --steps 20000 --out runs/sb3_td3

Then the exported file works with every deployment verb:

    nmrl inspect runs/sb3_td3/actor.onnx
    nmrl deploy eval runs/sb3_td3/actor.onnx
    nmrl bench runs/sb3_td3/actor.onnx --backends ort
"""

import argparse
from pathlib import Path

import gymnasium as gym
from stable_baselines3 import TD3

from nmrl.integrations.sb3 import export_actor, sparsify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=Path("runs/sb3_td3"))
    parser.add_argument("--episodes", type=int, default=5, help="closed-loop episodes of the export check")
    args = parser.parse_args()

    env = gym.make(args.env)
    model = TD3("MlpPolicy", env, learning_starts=args.learning_starts, seed=0, device="cpu")
    sparsify(model, "2:4")  # actor, critics and targets; optimizers bound, targets re-masked
    model.learn(args.steps)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "td3.zip")
    loaded = TD3.load(args.out / "td3.zip", env=env, device="cpu")  # N:M again: masks and shadows exact

    result = export_actor(loaded, args.out / "actor.onnx", episodes=args.episodes)
    print("\n".join(result.verification.lines()))
    print(f"wrote {result.path}")


if __name__ == "__main__":
    main()
