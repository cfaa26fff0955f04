"""The benchmarks against the PyTorch tutorial; ``python -m birnn.bench`` is their command line."""
