"""pitdist: distributed Pixel Transformer training with DeepSpeed Ulysses on Ray."""

__version__ = "0.1.0"
