"""Built-in synthetic data, so training runs anywhere with no download.

``SyntheticClassification``: each class is a striped pattern with its own orientation, frequency and
colour, drawn with a random phase, position jitter and noise; deterministic per (seed, index) and
learnable in a few steps. Images come normalized (mean 0.5, std 0.5 per channel), as CHW float32.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticClassification"]


class SyntheticClassification(Dataset):
    def __init__(self, length: int, img_size: int, num_classes: int = 10, seed: int = 0):
        if length < 1 or img_size < 1 or num_classes < 2:
            raise ValueError(f"need length >= 1, img_size >= 1, num_classes >= 2; got {length}, {img_size}, {num_classes}")
        self.length, self.img_size, self.num_classes, self.seed = length, img_size, num_classes, seed
        self.classes = [f"pattern_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        label = index % self.num_classes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        angle = math.pi * label / self.num_classes
        freq = 2.0 + 3.0 * (label % 3)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, self.img_size), torch.linspace(-1, 1, self.img_size), indexing="ij")
        phase = 2 * math.pi * torch.rand((), generator=g)
        wave = torch.sin(freq * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
        colour = torch.tensor([math.cos(2 * math.pi * label / self.num_classes + k) for k in (0.0, 2.1, 4.2)])
        image = 0.5 + 0.4 * colour[:, None, None] * wave + 0.1 * torch.randn(3, self.img_size, self.img_size, generator=g)
        return ((image.clamp(0, 1) - 0.5) / 0.5).float(), label
