"""Deployment: engines and runtimes for exported actors, closed-loop evaluation, latency profiles."""
