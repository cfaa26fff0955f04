"""birnn: a Hydra-configured experiment runner for bidirectional LSTM sequence classifiers."""

__version__ = "0.1.0"
