"""Deployed policies (``policy``: the interface and backend registry; ``ort_backend``,
``torch_backend``), closed-loop evaluation and latency profiling (``bench``)."""
