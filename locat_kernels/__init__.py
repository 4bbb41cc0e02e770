"""Fused Gaussian-biased attention (LocAtViT) for PyTorch: Triton kernels and their eager reference."""
from .attention import BACKENDS, gaussian_attention, locat_attention, locat_attention_qkvpacked, resolve_backend
from .fused.configs import set_fp32_precision
from .gaussian import gaussian_clamp, gaussian_eps, grid_positions
from .reference import gaussian_attention_reference, gaussian_bias, gaussian_parameters

__all__ = [
    "BACKENDS",
    "gaussian_attention",
    "locat_attention",
    "locat_attention_qkvpacked",
    "resolve_backend",
    "set_fp32_precision",
    "gaussian_attention_reference",
    "gaussian_bias",
    "gaussian_parameters",
    "gaussian_clamp",
    "gaussian_eps",
    "grid_positions",
]
