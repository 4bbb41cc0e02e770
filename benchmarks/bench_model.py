"""Whole-model throughput: LocAtViT per attention backend against timm's ViT of the same size.

Training: one AdamW step (forward, backward, update) under bf16 autocast; inference: a forward
under bf16 autocast and no_grad. Images/s from the median of ``triton.testing.do_bench``, and peak
memory of one step.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F

import locat_vit  # noqa: F401  (registers the LocAtViT models)

from .timing import cpu_median_ms, cuda_median_ms, peak_memory_gb


@dataclass(frozen=True)
class ModelCase:
    size: str  # tiny, small, base
    img_size: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.size} {self.img_size}"


GPU_CASES = [ModelCase("tiny", 224, 256), ModelCase("base", 224, 128), ModelCase("base", 512, 16)]
CPU_CASES = [ModelCase("tiny", 64, 4)]
VARIANTS = ("vit", "locat_triton", "locat_sdpa")


def build(case: ModelCase, variant: str, device):
    if variant == "vit":
        return timm.create_model(f"vit_{case.size}_patch16_224", img_size=case.img_size).to(device)
    backend = variant.removeprefix("locat_")
    return timm.create_model(f"locatvit_{case.size}", img_size=case.img_size, attn_backend=backend).to(device)


def bench_case(case: ModelCase, variant: str, device, log=print) -> dict:
    model = build(case, variant, device)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def train_step():
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad(), autocast:
            model(x)

    row = dict(model=case.name, size=case.size, img_size=case.img_size, batch=case.batch, variant=variant)
    for mode, fn in (("train", train_step), ("infer", infer)):
        model.train(mode == "train")
        ms = cuda_median_ms(fn, graph=False, warmup=200, rep=1000) if device == "cuda" else cpu_median_ms(fn, reps=3)
        row[f"{mode}_img_s"] = case.batch / ms * 1e3
        row[f"{mode}_peak_gb"] = peak_memory_gb(fn, device, above_current=False)
    log(f"  {case.name:<9} {variant:<13} train {row['train_img_s']:8.1f} img/s  infer {row['infer_img_s']:8.1f} img/s"
        + (f"  peak train {row['train_peak_gb']:.2f} GB" if row["train_peak_gb"] is not None else ""))
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """Each LocAtViT variant's images/s over timm's ViT of the same case."""
    vit = {r["model"]: r for r in rows if r["variant"] == "vit"}
    return [dict(model=r["model"], variant=r["variant"],
                 train_over_vit=r["train_img_s"] / vit[r["model"]]["train_img_s"],
                 infer_over_vit=r["infer_img_s"] / vit[r["model"]]["infer_img_s"])
            for r in rows if r["variant"] != "vit" and r["model"] in vit]
