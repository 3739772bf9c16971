"""The hidden-layer activations' names, torch-free: the config offers them as choices, and
:mod:`nmrl.train.networks` maps each to its module (so that a grid's worker process, which reads
a config before it sizes OpenMP, does not load torch)."""

ACTIVATION_NAMES = ("relu", "leaky_relu", "tanh")
