"""Fused Gaussian-biased attention (LocAtViT) for PyTorch: a Triton kernel and its eager reference."""
from .attention import BACKENDS, gaussian_attention
from .reference import gaussian_attention_reference, gaussian_bias, gaussian_clamp, gaussian_eps, grid_positions

__all__ = [
    "BACKENDS",
    "gaussian_attention",
    "gaussian_attention_reference",
    "gaussian_bias",
    "gaussian_clamp",
    "gaussian_eps",
    "grid_positions",
]
