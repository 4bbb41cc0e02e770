"""Built-in synthetic data, so training and the probe run anywhere with no download.

``SyntheticClassification``: each class is a striped pattern with its own orientation, frequency and
colour, drawn with a random phase and noise; learnable in a few steps. ``SyntheticScenes``: rectangles
and ellipses of textured classes with per-pixel labels, for the segmentation probe. Both are
deterministic per (seed, index); images come normalized (mean 0.5, std 0.5 per channel), CHW float32,
or for ``SyntheticClassification(..., uint8=True)`` as CHW uint8 (a quarter of the bytes through a data
loader's processes; ``from_uint8`` normalizes them on the device).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

# Each image draws from its own generator, seeded with seed * _SEED_STRIDE + index: datasets of up to a
# million images with different seeds never share an image's generator.
_SEED_STRIDE = 1_000_003

__all__ = ["SyntheticClassification", "SyntheticScenes", "from_uint8"]


def _colour(c, num_classes: int) -> torch.Tensor:
    """(3, *c.shape) RGB offsets of class (or label map) ``c``: three phases of one cosine."""
    c = torch.as_tensor(c, dtype=torch.float32)
    return torch.stack([torch.cos(2 * math.pi * c / num_classes + k) for k in (0.0, 2.1, 4.2)])


def _normalize(image: torch.Tensor) -> torch.Tensor:
    return ((image.clamp(0, 1) - 0.5) / 0.5).float()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) as the normalized float32 images the models take (mean 0.5, std 0.5)."""
    return images.float().div_(127.5).sub_(1.0)


class SyntheticClassification(Dataset):
    def __init__(self, length: int, img_size: int, num_classes: int = 10, seed: int = 0, uint8: bool = False):
        if length < 1 or img_size < 1 or num_classes < 2:
            raise ValueError(f"need length >= 1, img_size >= 1, num_classes >= 2; got {length}, {img_size}, {num_classes}")
        self.length, self.img_size, self.num_classes, self.seed = length, img_size, num_classes, seed
        self.uint8 = uint8
        self.classes = [f"pattern_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        label = index % self.num_classes
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + index)
        angle = math.pi * label / self.num_classes
        freq = 2.0 + 3.0 * (label % 3)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, self.img_size), torch.linspace(-1, 1, self.img_size), indexing="ij")
        phase = 2 * math.pi * torch.rand((), generator=g)
        wave = torch.sin(freq * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
        colour = _colour(label, self.num_classes)[:, None, None]
        image = 0.5 + 0.4 * colour * wave + 0.1 * torch.randn(3, self.img_size, self.img_size, generator=g)
        if self.uint8:
            return image.clamp(0, 1).mul(255).round().to(torch.uint8), label
        return _normalize(image), label


class SyntheticScenes(Dataset):
    """Rectangles and ellipses of ``num_classes - 1`` textured classes on a textured background (class 0)."""

    def __init__(self, length: int, img_size: int, num_classes: int = 5, seed: int = 0):
        self.length, self.img_size, self.num_classes, self.seed = length, img_size, num_classes, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + index)
        s = self.img_size
        ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
        label = torch.zeros(s, s, dtype=torch.long)
        for _ in range(int(torch.randint(2, 5, (), generator=g))):
            c = int(torch.randint(1, self.num_classes, (), generator=g))
            cy, cx = (torch.rand(2, generator=g) * s).tolist()
            h, w = ((0.15 + 0.25 * torch.rand(2, generator=g)) * s).tolist()
            if torch.rand((), generator=g) < 0.5:
                inside = ((ys - cy).abs() < h / 2) & ((xs - cx).abs() < w / 2)
            else:
                inside = ((ys - cy) / (h / 2)) ** 2 + ((xs - cx) / (w / 2)) ** 2 < 1
            label[inside] = c
        # each class: its own colour and stripe frequency
        c = label.float()
        angle = math.pi * c / self.num_classes
        wave = torch.sin((1 + c) * 0.6 * (xs * torch.cos(angle) + ys * torch.sin(angle)))
        image = 0.5 + 0.3 * _colour(c, self.num_classes) + 0.15 * wave + 0.05 * torch.randn(3, s, s, generator=g)
        return _normalize(image), label
