import os

import torch

# Two pytest-xdist workers share the two cores: one torch thread each.
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "disable")
