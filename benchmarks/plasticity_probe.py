"""Plasticity probe of a finished N:M run (docs/baselines.md, issue 23): masks pending a refresh,
dormant units, and mask flips per refresh over a short continuation from the last checkpoint
(the run's files are only read). Prints one JSON line.

    python benchmarks/plasticity_probe.py RUN_DIR [updates]
"""

import json
import sys
from pathlib import Path

import torch

from nmrl.envs import env_dims, make_env
from nmrl.sparsity.layers import NMLinear, nm_layers
from nmrl.sparsity.mask import nm_mask
from nmrl.train.algorithm import get_algorithm
from nmrl.train.buffer import ReplayBuffer
from nmrl.train.checkpoint import load_checkpoint
from nmrl.train.config import TrainConfig

torch.set_num_threads(1)
run = Path(sys.argv[1])
updates = int(sys.argv[2]) if len(sys.argv) > 2 else 400
cfg = TrainConfig.load(run / "config.json")
state = load_checkpoint(run / "checkpoints/last.pt")
env = make_env(cfg.env, seed=0)
obs_dim, act_dim, low, high = env_dims(env)
algo = get_algorithm(cfg.algo)(obs_dim, act_dim, low, high, cfg, torch.device("cpu"))
algo.load_state_dict(state["algorithm"])
buf = ReplayBuffer.allocate(cfg.buffer_size, obs_dim, act_dim, torch.device("cpu"), seed=0)
buf.load_state_dict(state["buffer"])
out = {"run": str(run), "step": state["train_state"]["step"]}

# masks that a refresh now would change (non-zero only with --mask-interval > 1)
pending = {}
for name, net in algo.modules.items():
    layers = nm_layers(net)
    if layers:
        changed = sum(int((layer.mask != nm_mask(layer.weight.detach(), layer.pattern)).sum()) for _, layer in layers)
        pending[name] = changed / (2 * sum(int(layer.mask.sum()) for _, layer in layers))
out["pending_flip_fraction"] = pending

# dormant units (Sokar et al. 2023, tau = 0.1): a unit whose mean |activation| is at most tau
# times the layer's average, on 4096 replay states (critics on (s, a) from the buffer)
batch = buf.sample(4096)


def dormant(net, x):
    fracs = []
    h = x
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o)) for k, m in enumerate(linears[:-1])]
    with torch.no_grad():
        net(*x)
    for h in hooks:
        h.remove()
    for k in sorted(acts):
        a = torch.relu(acts[k]).abs().mean(0)
        score = a / (a.mean() + 1e-9)
        fracs.append(float((score <= 0.1).float().mean()))
    return fracs


out["dormant_actor"] = dormant(algo.modules["actor"], (batch.obs,))
out["dormant_critic1"] = dormant(algo.modules["critic1"], (batch.obs, batch.action))

# mask flips per refresh over a continuation of `updates` gradient updates from the saved state
flips = {}
original = NMLinear.update_mask
owner = {id(layer): name for name, net in algo.modules.items() for _, layer in nm_layers(net)}


def counting(self):
    old = self.mask.clone()
    original(self)
    rec = flips.setdefault(owner.get(id(self), "?"), [0, 0])
    rec[0] += int((old != self.mask).sum()) // 2  # a flip = one kept weight swapped for a pruned one
    rec[1] += int(self.mask.sum())


NMLinear.update_mask = counting
for _ in range(updates):
    algo.update(buf.sample(cfg.batch_size))
out["flip_fraction_per_refresh"] = {k: v[0] / max(v[1], 1) for k, v in flips.items()}
# margin: share of groups whose smallest kept |w| is within 1% of the largest pruned |w|
margins = {}
for name in ("actor", "critic1"):
    close = total = 0
    for _, layer in nm_layers(algo.modules[name]):
        w = layer.weight.detach().abs()
        k = layer.in_features // layer.pattern.m * layer.pattern.m
        g = w[:, :k].reshape(w.shape[0], -1, layer.pattern.m).sort(-1, descending=True).values
        kept_min, pruned_max = g[..., layer.pattern.n - 1], g[..., layer.pattern.n]
        close += int((kept_min <= 1.01 * pruned_max).sum())
        total += kept_min.numel()
    margins[name] = close / max(total, 1)
out["groups_within_1pct"] = margins
print(json.dumps(out))
