import os

import torch

# Two pytest-xdist workers share the two cores: one torch thread each, also in the `nmrl`
# subprocesses the CLI tests start (two OpenMP threads per process on two busy cores spin-wait
# and make a TD3 update tens of times slower).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "disable")
