"""Benchmarks of the fused Gaussian attention and LocAtViT (``locat-bench``)."""
