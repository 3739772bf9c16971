"""Training: algorithms (TD3, RNM-TD3, ...), the replay buffer, the loop, checkpoints and run dirs."""
