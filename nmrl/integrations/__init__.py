"""Bridges to other RL libraries (optional extras): nmrl.integrations.sb3 for Stable-Baselines3."""
