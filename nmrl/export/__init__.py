"""Policy -> verified N:M ONNX (``onnx_export``), torch-free verification (``verify``), parity
checks (``parity``) and the compressed nm-packed format (``packed``).

Nothing is imported here, so ``nmrl.export.verify`` loads without PyTorch.
"""
