"""MMAudio training pipeline: media decoding, encoders, features, training, evaluation, tracking."""

__version__ = "0.1.0"
