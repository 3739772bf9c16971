"""Training throughput: env steps per second with one TD3 update per step, after warm-up.

Compares, side by side in one run and on the same CPU threads: nmrl TD3 dense, nmrl RNM-TD3 2:4
and Stable-Baselines3 TD3, all with 256-256 networks and batch 256. Runs are interleaved
(agent A, B, C, A, B, C, ...) so that drifts in machine load hit every agent alike; the table
shows medians over repeats and the ratios the project's targets are stated in.

    python benchmarks/train_throughput.py                      # HalfCheetah-v5 and Ant-v5
    python benchmarks/train_throughput.py --envs Hopper-v5 --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

WARMUP = 1_000  # random steps before the first update (not timed)
WINDOW = 1_000  # nmrl logs steps/s over windows of this many steps


def nmrl_steps_per_second(env_id: str, sparsity: str, steps: int, seed: int) -> float:
    from nmrl.train.config import TrainConfig
    from nmrl.train.loop import train
    from nmrl.train.run import read_metrics

    with tempfile.TemporaryDirectory() as runs:
        config = TrainConfig(
            env=env_id,
            sparsity=sparsity,
            seed=seed,
            total_steps=WARMUP + steps,
            learning_starts=WARMUP,
            buffer_size=WARMUP + steps,
            eval_every=10**9,
            eval_episodes=1,
            checkpoint_every=10**9,
            runs_dir=Path(runs),
            run_name="bench",
            progress=False,
        )
        run_dir = train(config)
        records = read_metrics(run_dir / "metrics.jsonl")
    # windows that lie wholly after the warm-up (the last one is logged before the final eval)
    rates = [r["steps_per_second"] for r in records if r["kind"] == "train" and r["step"] > WARMUP]
    return statistics.median(rates)


def sb3_steps_per_second(env_id: str, steps: int, seed: int) -> float:
    import gymnasium as gym
    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback

    class StepClock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.marks: dict[int, float] = {}

        def _on_step(self) -> bool:
            if self.num_timesteps % WINDOW == 0:
                self.marks[self.num_timesteps] = time.perf_counter()
            return True

    env = gym.make(env_id)
    model = TD3(
        "MlpPolicy",
        env,
        learning_starts=WARMUP,
        batch_size=256,
        buffer_size=WARMUP + steps,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": [256, 256]},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    clock = StepClock()
    model.learn(total_timesteps=WARMUP + steps, callback=clock)
    env.close()
    marks = sorted(clock.marks.items())
    rates = [
        (b_step - a_step) / (b_time - a_time)
        for (a_step, a_time), (b_step, b_time) in itertools.pairwise(marks)
        if a_step >= WARMUP
    ]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Ant-v5"])
    parser.add_argument("--steps", type=int, default=2_000, help="timed steps per run (after warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_results/train_throughput.csv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    agents = {
        "sb3 td3": lambda env, seed: sb3_steps_per_second(env, args.steps, seed),
        "nmrl td3 dense": lambda env, seed: nmrl_steps_per_second(env, "dense", args.steps, seed),
        "nmrl rnm-td3 2:4": lambda env, seed: nmrl_steps_per_second(env, "2:4", args.steps, seed),
    }
    rows = []
    for env_id in args.envs:
        samples: dict[str, list[float]] = {name: [] for name in agents}
        for repeat in range(args.repeats):
            for name, measure in agents.items():
                samples[name].append(measure(env_id, repeat))
                print(f"{env_id:<16} {name:<18} repeat {repeat}: {samples[name][-1]:7.1f} steps/s", flush=True)
        median = {name: statistics.median(values) for name, values in samples.items()}
        rows.append(
            {
                "env": env_id,
                **{f"{name} steps/s": round(value, 1) for name, value in median.items()},
                "dense / sb3": round(median["nmrl td3 dense"] / median["sb3 td3"], 2),
                "2:4 / dense": round(median["nmrl rnm-td3 2:4"] / median["nmrl td3 dense"], 2),
            }
        )

    print(
        f"\nTD3 training throughput, env steps/s (median of {args.repeats}, {args.steps} timed steps after "
        f"{WARMUP} warm-up, 256-256, batch 256, {args.threads} threads)"
    )
    header = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("targets: dense / sb3 >= 1.5;  2:4 / dense >= 1/1.2 = 0.83")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
