"""Whole-model throughput as users run it: LocAtViT against timm's ViT of the same size (and each
LocAt family against its backbone: RoPE-ViT, Swin, Jumbo; ``ModelCase.family``).

Training: one step of forward, backward and fused AdamW under bf16 autocast; inference: a forward
under bf16 autocast and no_grad. Each is timed with plain calls (no CUDA graph), eager and under
``torch.compile(model)``: warm-up steps, then ``repeats`` runs of ``steps`` steps between CUDA
events, the runs of the variants of one case interleaved; images/s from the median run, the spread
(max/min - 1) beside it. Also peak training memory and the CUDA kernels launched per step
(torch.profiler).

``layer_host_times``: host time of one attention layer on a launch-bound tiny input, LocAt (triton)
against timm's ``Attention``: forward (recording the gradient), forward+backward, and inference (no_grad).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F

import locat_vit  # noqa: F401  (registers the LocAtViT models)

from .timing import cpu_median_ms, peak_memory_gb


# family -> (the LocAt model, its backbone without LocAt: the "vit" variant), by size. timm has no
# tiny RoPE-ViT: its small one with ViT-Tiny's width and heads stands in (as locatvit_tiny_rope_mixed).
FAMILIES = {
    "vit": ("locatvit_{size}", "vit_{size}_patch16_224"),
    "rope": ("locatvit_{size}_rope_mixed", "vit_{size}_patch16_rope_mixed_224"),
    "swin": ("locatswin_{size}", "swin_{size}_patch4_window7_224"),
    "jumbo": ("locatjumbo_{size}", "jumbo_{size}"),
}
_TINY_ROPE = dict(embed_dim=192, num_heads=3)


@dataclass(frozen=True)
class ModelCase:
    size: str  # tiny, small, base
    img_size: int
    batch: int
    family: str = "vit"  # a key of FAMILIES

    @property
    def name(self) -> str:
        prefix = "" if self.family == "vit" else f"{self.family} "
        return f"{prefix}{self.size} {self.img_size}"

    @classmethod
    def parse(cls, spec: str) -> "ModelCase":
        """'base:384:32' -> ModelCase("base", 384, 32); 'swin:tiny:224:128': another family's."""
        parts = spec.split(":")
        family = parts.pop(0) if len(parts) == 4 else "vit"
        try:
            size, img, batch = parts
            case = cls(size, int(img), int(batch), family)
        except ValueError:
            raise ValueError(f"a model case is [family:]size:img:batch (e.g. base:384:32, swin:tiny:224:128), "
                             f"got {spec!r}") from None
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r} in {spec!r}: one of {', '.join(FAMILIES)}")
        return case


GPU_CASES = [ModelCase("tiny", 224, 256), ModelCase("small", 224, 256), ModelCase("base", 224, 128),
             ModelCase("base", 384, 32), ModelCase("base", 512, 16)]
CPU_CASES = [ModelCase("tiny", 64, 4)]
VARIANTS = ("vit", "locat_triton", "locat_sdpa")
MODES = ("eager", "compiled")


def build(case: ModelCase, variant: str, device, **kwargs):
    """The case's backbone without LocAt ("vit": timm's ViT, RoPE-ViT, Swin, or the Jumbo baseline)
    or its LocAt model (attn_backend from the variant name) at the case's image size; a LocAtViT
    built at 512 px (grid 32) trains in the published rate-2 mode."""
    locat, backbone = (name.format(size=case.size) for name in FAMILIES[case.family])
    if variant == "vit":
        if case.family == "rope" and case.size == "tiny":
            backbone, kwargs = backbone.replace("tiny", "small"), {**_TINY_ROPE, **kwargs}
        return timm.create_model(backbone, img_size=case.img_size, **kwargs).to(device)
    backend = variant.removeprefix("locat_")
    return timm.create_model(locat, img_size=case.img_size, attn_backend=backend, **kwargs).to(device)


def bench_case(case: ModelCase, variants, device, mode: str = "eager", repeats: int = 5, steps: int = 10,
               log=print, models: dict | None = None) -> list[dict]:
    """One row per variant of ``case`` in ``mode``. All variants are built (``models`` may bring some,
    by name) before any is timed, and their timed runs interleave (v1, v2, ..., v1, v2, ...), so a
    drift of the machine (clocks, host load) falls on every variant alike instead of on whichever
    ran last."""
    if mode == "compiled":
        # Every timm ViT shares VisionTransformer.forward's code object: without a reset, models
        # compiled earlier in the process use up Dynamo's recompile limit and later ones run eager.
        torch._dynamo.reset()
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    workloads = {v: Workload((models or {}).get(v) or build(case, v, device), mode, device) for v in variants}
    rows = {v: dict(model=case.name, size=case.size, img_size=case.img_size, batch=case.batch, variant=v, mode=mode)
            for v in variants}
    for phase, training in (("train", True), ("infer", False)):
        fns = {}
        for v, work in workloads.items():
            work.model.train(training)
            fns[v] = functools.partial(work.train_step if training else work.infer, x, y, autocast)
        if device == "cuda":
            runs = interleaved_step_times_ms(fns, repeats=repeats, steps=steps)
        for v, fn in fns.items():
            row = rows[v]
            if device == "cuda":
                ms = sorted(runs[v])[len(runs[v]) // 2]
                row[f"{phase}_spread"] = max(runs[v]) / min(runs[v]) - 1
                row[f"{phase}_kernels_per_step"], row[f"{phase}_gpu_busy_ms"] = kernel_profile(fn)
                # what this variant's call adds to the memory in use, plus its own resident tensors:
                # the other variants' weights stay out of its number
                row[f"{phase}_peak_gb"] = peak_memory_gb(fn, device, above_current=True) + (
                    workloads[v].resident_bytes(training) + x.nbytes + y.nbytes) / 2**30
            else:
                ms = cpu_median_ms(fn, reps=3)
                row[f"{phase}_peak_gb"] = None
            row[f"{phase}_img_s"] = case.batch / ms * 1e3
    for row in rows.values():
        log(f"  {case.name:<9} {row['variant']:<13} {mode:<8} train {row['train_img_s']:8.1f} img/s  "
            f"infer {row['infer_img_s']:8.1f} img/s"
            + (f"  (spread {row['train_spread']:.1%} / {row['infer_spread']:.1%}; kernels/step "
               f"{row['train_kernels_per_step']} / {row['infer_kernels_per_step']}; GPU busy ms/step "
               f"{row['train_gpu_busy_ms']:.2f} / {row['infer_gpu_busy_ms']:.2f}; peak train "
               f"{row['train_peak_gb']:.2f} GB)" if device == "cuda" else ""))
    return list(rows.values())


class Workload:
    """One variant's model, its (compiled) forward and fused AdamW, with a training step and an
    inference call under bf16 autocast."""

    def __init__(self, model, mode: str, device):
        self.model = model
        self.forward = torch.compile(model) if mode == "compiled" else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

    def train_step(self, x, y, autocast):
        with autocast:
            loss = F.cross_entropy(self.forward(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def infer(self, x, y, autocast):
        with torch.no_grad(), autocast:
            self.forward(x)

    def resident_bytes(self, training: bool) -> int:
        """Weights, and when training AdamW's state: what lives between this variant's calls."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        if training:
            tensors += [t for state in self.opt.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


def train_step(case: ModelCase, variant: str, mode: str, device="cuda", model=None, phase: str = "train"):
    """A no-argument training step of a fresh ``variant`` model (or of ``model``) on a random batch of
    ``case``, eager or compiled (Dynamo reset first: see ``bench_case``); with ``phase="infer"`` its
    inference call instead."""
    if mode == "compiled":
        torch._dynamo.reset()
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    model = model if model is not None else build(case, variant, device)
    work = Workload(model, mode, device)
    return functools.partial(work.train_step if phase == "train" else work.infer, x, y, autocast)


def interleaved_step_times_ms(fns: dict, *, repeats: int, steps: int, warmup: int = 5) -> dict[str, list[float]]:
    """Per-step ms of ``repeats`` runs of ``steps`` plain calls for each function, the runs of the
    functions alternating; timed with CUDA events."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(_timed_ms(fn, steps))
    return runs


def _timed_ms(fn, steps: int) -> float:
    """Per-step ms of ``steps`` plain calls between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def kernel_profile(fn) -> tuple[int, float]:
    """CUDA kernels launched by one call and the ms they run, summed (GPU busy: the step's time where the
    host keeps up), by torch.profiler after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels), sum(e.device_time_total for e in kernels) / 1e3


def ratios(rows: list[dict]) -> list[dict]:
    """Each LocAt variant's images/s over the backbone ("vit" variant) of the same case (model and batch) and
    mode, and its peak memory."""
    vit = {(r["model"], r.get("batch"), r["mode"]): r for r in rows if r["variant"] == "vit"}
    out = []
    for r in rows:
        base = vit.get((r["model"], r.get("batch"), r["mode"]))
        if r["variant"] == "vit" or base is None:
            continue
        entry = dict(model=r["model"], batch=r.get("batch"), variant=r["variant"], mode=r["mode"],
                     train_over_vit=r["train_img_s"] / base["train_img_s"],
                     infer_over_vit=r["infer_img_s"] / base["infer_img_s"])
        for phase in ("train", "infer"):  # images per GPU-busy ms: the ratio where neither step waits on the host
            if r.get(f"{phase}_gpu_busy_ms") and base.get(f"{phase}_gpu_busy_ms"):
                entry[f"{phase}_gpu_over_vit"] = base[f"{phase}_gpu_busy_ms"] / r[f"{phase}_gpu_busy_ms"]
        if r.get("train_peak_gb") and base.get("train_peak_gb"):
            entry["train_memory_over_vit"] = r["train_peak_gb"] / base["train_peak_gb"]
        out.append(entry)
    return out


def layer_host_times(device, calls: int = 200, rounds: int = 5, others: dict | None = None) -> dict:
    """Host microseconds per call of one attention layer on a tiny input (B = 1, 17 tokens, bf16
    autocast, eager; a forward recording the gradient, a forward+backward, and an inference forward under no_grad):
    LocAtViT-Tiny's ``blocks[0].attn`` (triton), timm ViT-Tiny's, and ``others``
    (name -> a layer of the same width). Calls run back to back and the device keeps up, so the wall
    time per call is the host's. ``rounds`` of ``calls`` per layer, the layers alternating; the
    median round, and the spread (max/min - 1); ratios over timm's layer."""
    case = ModelCase("tiny", 64, 1)
    layers = {"locat": build(case, "locat_triton", device).blocks[0].attn,
              "timm": build(case, "vit", device).blocks[0].attn, **(others or {})}
    x = torch.randn(1, 17, 192, device=device, requires_grad=True)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def forward(layer):
        with autocast:
            return layer(x)

    def forward_backward(layer):
        forward(layer).sum().backward()

    def inference(layer):
        with torch.no_grad():
            forward(layer)

    out = {}
    kinds = (("forward", forward), ("forward_backward", forward_backward), ("inference", inference))
    for kind, fn in kinds:
        times = {name: [] for name in layers}
        for name, layer in layers.items():
            for _ in range(20):
                fn(layer)
        for _ in range(rounds):
            for name, layer in layers.items():
                torch.cuda.synchronize() if device == "cuda" else None
                t = time.perf_counter()
                for _ in range(calls):
                    fn(layer)
                torch.cuda.synchronize() if device == "cuda" else None
                times[name].append((time.perf_counter() - t) / calls * 1e6)
        for name, runs in times.items():
            out[f"{name}_{kind}_us"] = sorted(runs)[len(runs) // 2]
            out[f"{name}_{kind}_spread"] = max(runs) / min(runs) - 1
    for kind, _ in kinds:
        for name in layers:
            if name != "timm":
                prefix = "" if name == "locat" else f"{name}_"
                out[f"{prefix}{kind}_over_timm"] = out[f"{name}_{kind}_us"] / out[f"timm_{kind}_us"]
    return out
