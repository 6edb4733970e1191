"""keras-cskd: CLIP-aligned aesthetics learners (CSKD) in Keras 3, any backend."""

__version__ = "0.1.0"
