"""The fused Triton kernels and their launchers.

- ``tiles``: shared ``@triton.jit`` helpers (positions, exponents, radius, key layouts, loads).
- ``forward``: ``attention_forward`` (logits + Gaussian + online softmax + P @ V); ``layer_forward``, the same
  with var and alpha made inside it from the queries (a call that records no gradient: one launch).
- ``backward``: ``attention_backward`` (dq with dvar/dalpha, then dk/dv).
- ``gaug``: ``gaug_forward`` / ``gaug_backward`` (var and alpha from the queries, one launch each
  way, and the skip radius).
- ``window``: ``window_forward`` / ``window_backward`` (small windows with an additive bias and a
  per-window mask, LocAt Swin: a window is one tile, one launch each way).
- ``configs``: block sizes and constexpr flags per launch; ``Launch`` (one launch with all but its tensors
  fixed) and the eager calls' ``Plans`` of them. Each launcher takes ``traced`` and an eager call's ``plan``.
"""
from .backward import attention_backward
from .forward import attention_forward, layer_forward
from . import window
from .gaug import gaug_backward, gaug_forward
from .window import window_backward, window_forward

__all__ = ["attention_forward", "layer_forward", "attention_backward", "gaug_forward", "gaug_backward",
           "window_forward", "window_backward", "window"]
