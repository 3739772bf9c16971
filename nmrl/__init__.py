"""nmrl: N:M semi-structured sparse deep reinforcement learning, from training to TensorRT."""

__version__ = "0.1.0"
