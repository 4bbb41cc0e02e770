"""``locat-train``: train a LocAt model (or a timm ViT, Swin or RoPE-ViT given LocAt) on an image folder or synthetic data.

    locat-train --model locatvit_tiny --data synthetic --img-size 64 --batch-size 8 --epochs 2 --output runs/a
    locat-train --from-vit vit_small_patch16_224 --pretrained-file vit_s.safetensors --data /data/imagenet ...
    torchrun --nproc_per_node 2 -m locat_vit.train ...          (DistributedDataParallel; --batch-size per process)

bf16 autocast and the triton backend on CUDA (sdpa on CPU); AdamW with warmup and cosine decay from
timm's factories; a progress line with loss, images/s and ETA; validation accuracy per epoch; a JSON
log; checkpoints ``last.pth`` and ``best.pth`` written atomically; ``--resume`` continues the same run
(model, optimizer, scheduler, epoch, step and RNG states). ``--max-steps`` is the run's total of
optimizer steps, so a resumed command with the same flags ends where the uninterrupted one would.
``--save-every N`` also writes ``last.pth`` every N steps, and SIGTERM (a scheduler's preemption) or
SIGINT (Ctrl-C) writes it at the end of the current step and exits with 143 or 130, ready for
``--resume`` (under DDP, a signal to any rank stops every rank after the same step). Every argument,
path, checkpoint and image-folder class list is checked, the output folder written to, its free
space compared with the checkpoints' size, and locked (``run.lock``: one live run per folder), before
training starts. An unreadable image is named and skipped, up to ``--max-unreadable`` of a split.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models import eva, swin_transformer, vision_transformer
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, DistributedSampler

from .attention import ATTN_BACKENDS
from .convert import locatify
from .data import SyntheticClassification, from_uint8
from .locatvit import load_checkpoint, read_checkpoint, state_dict_misfit

__all__ = ["main", "build_parser"]

# The backbones LocAt comes on, each with timm's filter for its checkpoints.
_CHECKPOINT_FILTERS = ((swin_transformer.SwinTransformer, swin_transformer.checkpoint_filter_fn),
                       (eva.Eva, eva.checkpoint_filter_fn),
                       (vision_transformer.VisionTransformer, vision_transformer.checkpoint_filter_fn))
_BACKBONES = tuple(cls for cls, _ in _CHECKPOINT_FILTERS)
_BACKBONE_MODULES = {cls.__module__ for cls in _BACKBONES} | {"locat_vit.jumbo"}  # where their registry entries live

STEADY_AFTER = 5  # steps of an epoch left out of its steady images/s (compilation, allocator warm-up)
WARMUP_START = 1e-3  # the linear warmup starts at --lr / 1000


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default (where it has one) in --help."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="locat-train", description=__doc__.splitlines()[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--model", help="a registered LocAt model (default: locatvit_tiny; also locatswin_*, locatjumbo_*, "
                                   "locatvit_*_rope_mixed), or a timm ViT, Swin or RoPE-ViT trained unchanged "
                                   "(the baseline, e.g. vit_tiny_patch16_224)")
    p.add_argument("--from-vit", help="a timm ViT, Swin or RoPE-ViT (e.g. vit_small_patch16_224) given LocAt by locatify")
    p.add_argument("--pretrained-file", type=Path, help="local checkpoint (.pth or .safetensors) to start from")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder with train/ and val/ class folders")
    p.add_argument("--img-size", type=int, default=224, help="training and validation image side")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training data")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps of the whole run (a resumed "
                                                 "run counts the steps before it)")
    p.add_argument("--save-every", type=int, help="also write last.pth every this many optimizer steps")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--output", type=Path, required=True, help="folder for checkpoints and the JSON log")
    p.add_argument("--resume", type=Path, help="a last.pth/best.pth of an earlier run to continue")
    p.add_argument("--attn-backend", choices=ATTN_BACKENDS, default="auto",
                   help="auto: the fused triton kernels on CUDA, the SDPA path elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--num-classes", type=int, help="default: the dataset's")
    p.add_argument("--synthetic-size", type=int, default=512, help="training images of the synthetic data")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--max-unreadable", type=float, default=0.01,
                   help="image folders: an unreadable image is named in a warning and the next one used; the run "
                        "stops once more than this share of a split's images proved unreadable (per loader process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init, data order and augmentation")
    p.add_argument("--log-every", type=int, default=10, help="optimizer steps between progress lines")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    rank, world, device = _init_distributed()
    lock = _lock(parser, args.output) if rank == 0 else None
    try:
        return _train(parser, args, rank, world, device)
    except UnreadableImages as e:  # raised in a loader process: DataLoader re-raises it with that traceback
        print(f"locat-train: error: {str(e).strip().splitlines()[-1].split('UnreadableImages: ')[-1]}",
              file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)
        if world > 1:
            dist.destroy_process_group()


def _validate(parser, args) -> None:
    if args.model and args.from_vit:
        parser.error("give --model or --from-vit, not both")
    if args.resume and args.pretrained_file:
        parser.error("--resume carries its own weights: drop --pretrained-file")
    args.model = args.model or (None if args.from_vit else "locatvit_tiny")
    args.baseline = bool(args.model) and not args.model.startswith("locat") and timm.is_model(args.model)
    if args.model and not args.baseline and args.model not in timm.list_models("locat*"):
        parser.error(f"unknown model {args.model!r}; registered LocAt models: {timm.list_models('locat*')}, "
                     f"or a timm ViT, Swin or RoPE-ViT (e.g. vit_tiny_patch16_224) as the baseline")
    for name in (args.model if args.baseline else None, args.from_vit):
        module = timm.models.model_entrypoint(name).__module__ if name and timm.is_model(name) else None
        if module and module not in _BACKBONE_MODULES:
            parser.error(f"{name} is not a ViT, Swin or RoPE-ViT (it comes from {module}): LocAt comes on those")
    if args.attn_backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--attn-backend triton needs a CUDA GPU and none is visible; on a CPU use --attn-backend auto "
                     "(the SDPA path), or set TRITON_INTERPRET=1 to run the kernels through Triton's interpreter "
                     "(a correctness tool, very slow)")
    if args.baseline and args.attn_backend != "auto":
        parser.error(f"--attn-backend is for LocAtViT; {args.model} is a timm ViT with its own attention")
    if args.from_vit and not timm.is_model(args.from_vit):
        parser.error(f"unknown timm model {args.from_vit!r}")
    for name in ("img_size", "batch_size", "epochs", "accum_steps", "synthetic_size", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.max_unreadable <= 1:
        parser.error(f"--max-unreadable is a share of the images, from 0 to 1; got {args.max_unreadable}")
    for name in ("max_steps", "save_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.data != "synthetic":
        root = Path(args.data)
        missing = [d for d in ("train", "val") if not (root / d).is_dir()]
        if missing:
            parser.error(f"--data {root}: no {' or '.join(d + '/' for d in missing)} folder "
                         f"(expected an ImageFolder tree with train/ and val/)")
        _check_classes(parser, root)
    for name in ("pretrained_file", "resume"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name.replace('_', '-')} {path} does not exist")
    try:  # the output folder, written to now rather than at the first checkpoint
        args.output.mkdir(parents=True, exist_ok=True)
        probe = args.output / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        parser.error(f"--output {args.output} cannot be written: {e.strerror or e}")


def _check_classes(parser, root: Path) -> None:
    """train/ and val/ hold the same class folders, each with at least one image: a class missing
    from one split would shift the label indices of the other, silently."""
    from timm.data.readers.img_extensions import get_img_extensions

    extensions = set(get_img_extensions())
    classes = {}
    for split in ("train", "val"):
        folders = sorted(d for d in (root / split).iterdir() if d.is_dir())
        empty = [d.name for d in folders if not any(p.suffix.lower() in extensions for p in d.rglob("*"))]
        if empty:
            parser.error(f"--data {root / split}: class folders with no images: {', '.join(empty[:5])}"
                         f"{', ...' if len(empty) > 5 else ''}")
        classes[split] = [d.name for d in folders]
    if classes["train"] != classes["val"]:
        only = {split: sorted(set(classes[split]) - set(classes[other]))
                for split, other in (("train", "val"), ("val", "train"))}
        parser.error(f"--data {root}: train/ and val/ must hold the same classes; only in train/: "
                     f"{', '.join(only['train'][:5]) or '-'}; only in val/: {', '.join(only['val'][:5]) or '-'}")


def _lock(parser, output: Path) -> Path:
    """``output/run.lock`` naming this process and host, or an error naming the live run that holds
    it. A lock left by a process that is gone (on this host) is taken over."""
    lock, host = output / "run.lock", socket.gethostname()
    try:
        pid, lock_host = lock.read_text().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):
        pid = lock_host = None
    if pid is not None and (pid, lock_host) != (os.getpid(), host):
        alive = True  # another host's process cannot be checked from here
        if lock_host == host:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:  # another user's live process
                pass
        if alive:
            parser.error(f"--output {output} is in use by a live run (pid {pid} on {lock_host}, {lock}); use another "
                         f"folder, or delete the lock if that run is gone")
    lock.write_text(f"{os.getpid()} {host}\n")
    for tmp in output.glob("*.tmp"):  # left by a run that was killed mid-write (this folder is ours now)
        tmp.unlink(missing_ok=True)
    return lock


def _init_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _data(args):
    if args.data == "synthetic":
        n = args.num_classes or 10
        # uint8 through the loaders (normalized on the device): float32 images would cost 4x the host traffic
        return (SyntheticClassification(args.synthetic_size, args.img_size, n, seed=args.seed, uint8=True),
                SyntheticClassification(max(args.synthetic_size // 4, 1), args.img_size, n, seed=args.seed + 1,
                                        uint8=True), n)
    from timm.data import create_dataset, create_transform

    train = create_dataset("", root=str(Path(args.data) / "train"),
                           transform=create_transform(args.img_size, is_training=True))
    val = create_dataset("", root=str(Path(args.data) / "val"), transform=create_transform(args.img_size))
    classes = len(getattr(train.reader, "class_to_idx", {})) or None
    share = args.max_unreadable
    return _NamedFailures(train, share), _NamedFailures(val, share), args.num_classes or classes


class UnreadableImages(RuntimeError):
    """More than ``--max-unreadable`` of a split's images could not be read."""


class _NamedFailures(torch.utils.data.Dataset):
    """timm's image dataset, whose own retry warns without the file's name: an unreadable image is
    named on stderr and the next one taken instead; past ``max_share`` of the split's images
    (counted in this process) it raises ``UnreadableImages``."""

    def __init__(self, dataset, max_share: float):
        dataset._max_retries = 1  # timm raises on the first failure; the retry is ours, with the name
        logging.getLogger("timm.data.dataset").setLevel(logging.ERROR)  # its own warning has no name
        self.dataset, self.max_share, self.bad = dataset, max_share, 0
        self.reader = dataset.reader

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        n = len(self.dataset)
        for i in range(index, index + n):
            try:
                return self.dataset[i % n]
            except RuntimeError:
                self.bad += 1
                name = self.reader.filename(i % n, absolute=True)
                print(f"warning: unreadable image skipped (the next one used instead): {name}", file=sys.stderr,
                      flush=True)
                if self.bad > self.max_share * n:
                    raise UnreadableImages(
                        f"{self.bad} of {n} images under {Path(name).parents[1]} are unreadable (more than "
                        f"--max-unreadable {self.max_share}); the last: {name}") from None
        raise UnreadableImages(f"no readable image among {n}")


def _model(parser, args, num_classes):
    kwargs = dict(img_size=args.img_size, num_classes=num_classes)
    try:
        if args.baseline:
            model = timm.create_model(args.model, **kwargs)
        elif args.model:
            model = timm.create_model(args.model, attn_backend=args.attn_backend, **kwargs)
        else:
            model = timm.create_model(args.from_vit, **kwargs)
        name = args.model or args.from_vit
        if not isinstance(model, _BACKBONES):
            parser.error(f"{name} is a {type(model).__name__}, not one of the backbones LocAt comes on "
                         f"({', '.join(c.__name__ for c in _BACKBONES)})")
        patch = model.patch_embed.patch_size
        if any(args.img_size % p for p in patch):
            parser.error(f"--img-size must be a multiple of {name}'s patch size {patch[0]}, got {args.img_size}")
        if args.pretrained_file:
            load_checkpoint(model, args.pretrained_file, filter_fn=_keep_new_head)
        if args.from_vit:
            model = locatify(model, attn_backend=args.attn_backend)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    return model


def _keep_new_head(state, model):
    """timm's checkpoint filter of the model's family, and a classifier of another size replaced by the
    model's fresh one."""
    state = next(f for cls, f in _CHECKPOINT_FILTERS if isinstance(model, cls))(state, model)
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            print(f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)}: new head")
            state[key] = own[key]
    return state


def _train(parser, args, rank, world, device) -> int:
    """The run: set up, resume, then per epoch the steps and the epoch's end (validation, log,
    checkpoints). Returns the exit code (128 + the signal that stopped it, else 0)."""
    run = _setup(parser, args, rank, world, device)
    if args.resume and not _resume(parser, args, run):
        return 0
    # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets (no copy in and out)
    net = torch.nn.parallel.DistributedDataParallel(
        run.model, device_ids=[device.index] if run.cuda else None, gradient_as_bucket_view=True) \
        if world > 1 else run.model
    run.net = torch.compile(net) if args.compile else net
    log = _Progress(rank, run.updates_per_epoch, args.epochs)
    with _StopSignals() as stop:
        for epoch in range(run.epoch, args.epochs):
            stats = _train_epoch(run, epoch, log, stop)
            if stats.signum:
                return 128 + stats.signum
            _end_epoch(run, epoch, stats, log)
            if args.max_steps and run.global_step >= args.max_steps:
                break
    if rank == 0:
        print(f"done: {run.global_step} steps, best val acc {run.best_acc:.4f}; checkpoints in {args.output}")
    return 0


@dataclass
class _Run:
    """What a run holds between its steps: model and its (DDP, compiled) wrapper ``net``, data,
    optimizer and schedule, and the counters a checkpoint saves."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    sampler: "_SkipFirst"
    loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    updates_per_epoch: int
    net: torch.nn.Module = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_acc: float = float("-inf")  # best.pth from the first epoch on
    history: list = field(default_factory=list)
    stop_group: object = None  # DDP: a gloo group for the per-step stop flag (host only, no device sync)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def agreed_signal(self, signum: int | None) -> int:
        """The stop signal any rank has received (0: none), so that every rank stops after the same
        step, also when the scheduler signalled only some of them."""
        if self.world == 1:
            return signum or 0
        flag = torch.tensor([signum or 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.stop_group)
        return int(flag)

    def checkpoint(self, next_epoch: int, next_step: int) -> dict:
        """Everything ``--resume`` restores, to continue at (next_epoch, next_step)."""
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), epoch=next_epoch, step_in_epoch=next_step,
                    global_step=self.global_step, best_acc=self.best_acc, history=self.history,
                    args=_plain(vars(self.args)),
                    rng=dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if self.cuda else None,
                             python=random.getstate()))


@dataclass
class _EpochStats:
    """What one epoch's steps measured, for its log record; ``signum``: a signal stopped the run."""
    losses: list
    images_seen: int
    t0: float
    first_step: int
    steady: tuple | None  # (time, images) after the epoch's first STEADY_AFTER steps
    spans: list  # CUDA events around each later micro-batch's forward, backward and update
    signum: int = 0


def _setup(parser, args, rank, world, device) -> _Run:
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # timm's random crops draw from Python's generator
    train_set, val_set, num_classes = _data(args)
    if not num_classes:
        parser.error("could not tell the number of classes: pass --num-classes")
    model = _model(parser, args, num_classes).to(device)
    cuda = device.type == "cuda"
    sampler = _SkipFirst(DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                            drop_last=True))
    # Each loader draws its workers' base seed from a generator of its own, not from the global one that
    # the augmentations use: a resumed run's global stream then continues exactly where it was saved.
    loader = DataLoader(train_set, args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
                        pin_memory=cuda, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_set, args.batch_size, num_workers=args.workers,
                            sampler=DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False),
                            generator=torch.Generator().manual_seed(args.seed))
    updates_per_epoch = len(loader) // args.accum_steps
    if updates_per_epoch < 1:
        parser.error(f"{len(train_set)} training images give no full step of {args.batch_size} x {args.accum_steps} "
                     f"x {world} processes")
    optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.lr * WARMUP_START,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    _check_free_space(parser, args.output, model)
    run = _Run(args, rank, world, device, model, sampler, loader, val_loader, optimizer, scheduler, updates_per_epoch)
    if world > 1:
        run.stop_group = dist.new_group(backend="gloo")
    return run


def _check_free_space(parser, output: Path, model) -> None:
    """Room for the checkpoints before the first step: last.pth and best.pth, each about three times
    the weights (weights and AdamW's two moments), plus a temp copy while one is written."""
    need = 3 * 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = shutil.disk_usage(output).free
    if free < need:
        parser.error(f"--output {output}: {free / 2**20:.0f} MiB free, the checkpoints need about "
                     f"{need / 2**20:.0f} MiB")


def _resume(parser, args, run: _Run) -> bool:
    """Restore ``run`` from ``--resume``; False when the run is already at ``--max-steps``."""
    try:
        state = read_checkpoint(args.resume)
    except ValueError as e:
        parser.error(f"--resume: {e}")
    missing = {"model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng"} - (
        state.keys() if isinstance(state, dict) else set())
    if missing:
        parser.error(f"--resume {args.resume} is not a locat-train checkpoint (no {sorted(missing)})")
    misfit = state_dict_misfit(run.model, state["model"])
    if misfit:
        parser.error(f"--resume {args.resume} does not fit the model: {misfit}")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch, run.step_in_epoch, run.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
    run.best_acc, run.history = state.get("best_acc", 0.0), state.get("history", [])
    torch.set_rng_state(state["rng"]["torch"])
    if run.cuda and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    if state["rng"].get("python") is not None:  # timm's random crops draw from Python's generator
        random.setstate(_as_tuples(state["rng"]["python"]))
    if run.rank == 0:
        print(f"resumed {args.resume}: epoch {run.epoch}, step {run.global_step}")
    if args.max_steps and run.global_step >= args.max_steps:
        if run.rank == 0:
            print(f"nothing to do: the run is at step {run.global_step}, --max-steps is {args.max_steps}")
        return False
    return True


def _as_tuples(x):
    """Python's random state as ``random.setstate`` wants it (a checkpoint may hand back lists)."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class _SkipFirst(torch.utils.data.Sampler):
    """The wrapped sampler's indices after the first ``skip``: a resumed epoch starts at its next
    batch without reading (decoding, augmenting) the ones it has done."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _train_epoch(run: _Run, epoch: int, log, stop) -> _EpochStats:
    """The optimizer steps of one epoch (from ``run.step_in_epoch`` when resumed inside it), with
    progress lines, step checkpoints, and a checkpoint and stop on SIGTERM/SIGINT."""
    args, world = run.args, run.world
    run.sampler.set_epoch(epoch)
    run.net.train()
    stats = _EpochStats([], 0, time.perf_counter(), run.step_in_epoch, None, [])
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    done_batches = stats.first_step * args.accum_steps  # resumed inside the epoch: the same order from here
    run.sampler.skip = done_batches * args.batch_size
    # Whole optimizer steps only: a trailing share of a step would leave its gradients in the next epoch's first.
    batches = itertools.islice(run.loader, run.updates_per_epoch * args.accum_steps - done_batches)
    for i, (images, labels) in enumerate(batches, start=done_batches):
        if images.is_floating_point() and not torch.isfinite(images).all():  # on the host: no device sync
            raise FloatingPointError(f"non-finite values in the input images (epoch {epoch}, batch {i})")
        images, labels = _to_device(images, run.device), labels.to(run.device, non_blocking=True)
        timed = run.cuda and stats.steady is not None  # GPU time of the step itself, data loading left out
        if timed:
            stats.spans.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            stats.spans[-1][0].record()
        last_micro = (i + 1) % args.accum_steps == 0
        with run.net.no_sync() if world > 1 and not last_micro else nullcontext():
            with run.autocast():
                loss = F.cross_entropy(run.net(images), labels)
            (loss / args.accum_steps).backward()
        stats.losses.append(loss.detach())
        stats.images_seen += images.shape[0] * world
        if last_micro:
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        if timed:
            stats.spans[-1][1].record()
        if not last_micro:
            continue
        run.global_step += 1
        run.step_in_epoch += 1
        run.scheduler.step_update(run.global_step)
        done = run.step_in_epoch - stats.first_step
        if done == STEADY_AFTER:
            stats.steady = (_synced_time(run.cuda), stats.images_seen)
        last = run.step_in_epoch == run.updates_per_epoch or (args.max_steps and run.global_step >= args.max_steps)
        if run.step_in_epoch % args.log_every == 0 or done == 1 or last:
            elapsed = time.perf_counter() - stats.t0
            eta = elapsed / done * (run.updates_per_epoch - run.step_in_epoch)
            log.step(epoch, run.step_in_epoch, torch.stack(stats.losses[-args.accum_steps:]).mean().item(),
                     stats.images_seen / elapsed, eta)
        signum = run.agreed_signal(stop.signum)
        if signum or (args.save_every and run.global_step % args.save_every == 0):
            if run.rank == 0:
                _atomic_save(run.checkpoint(epoch, run.step_in_epoch), args.output / "last.pth")
            if signum:
                if run.rank == 0:
                    print(f"{signal.Signals(signum).name}: saved {args.output / 'last.pth'} at step "
                          f"{run.global_step}; continue with --resume {args.output / 'last.pth'}", flush=True)
                stats.signum = signum
                return stats
        if args.max_steps and run.global_step >= args.max_steps:
            break
    return stats


def _end_epoch(run: _Run, epoch: int, stats: _EpochStats, log) -> None:
    """Validation, the epoch's log record (one per epoch, also when resumed inside it), last.pth,
    best.pth and log.json."""
    args = run.args
    finished = run.step_in_epoch >= run.updates_per_epoch
    t1 = _synced_time(run.cuda)
    steady = stats.steady
    steady_img_s = (stats.images_seen - steady[1]) / (t1 - steady[0]) if steady and stats.images_seen > steady[1] \
        else None
    gpu_s = sum(a.elapsed_time(b) for a, b in stats.spans) / 1e3
    acc = _evaluate(run, log)
    ranks = _across_ranks(run, stats)
    losses = ranks["step_losses"]
    record = dict(epoch=epoch, steps=run.step_in_epoch, global_step=run.global_step, val_acc=acc,
                  train_loss=sum(losses) / len(losses) if losses else None,
                  img_s=stats.images_seen / (t1 - stats.t0), steady_img_s=steady_img_s,
                  gpu_img_s=len(stats.spans) * args.batch_size * run.world / gpu_s if stats.spans else None,
                  peak_mem_gib=torch.cuda.max_memory_allocated(run.device) / 2**30 if run.cuda else None,
                  lr=run.optimizer.param_groups[0]["lr"], world_size=run.world, **ranks)
    if run.history and run.history[-1]["epoch"] == epoch:  # an epoch resumed mid-way: one record, the latest
        record["resumed_at_step"] = stats.first_step
        run.history[-1] = record
    else:
        run.history.append(record)
    best = acc > run.best_acc
    run.best_acc = max(run.best_acc, acc)
    if run.rank == 0:
        log.epoch(record)
        state = run.checkpoint(epoch + 1 if finished else epoch, 0 if finished else run.step_in_epoch)
        _atomic_save(state, args.output / "last.pth")
        if best:
            _atomic_save(state, args.output / "best.pth")
        _atomic_write(args.output / "log.json", json.dumps(dict(args=_plain(vars(args)), epochs=run.history), indent=1))
    run.step_in_epoch = 0


def _across_ranks(run: _Run, stats: _EpochStats) -> dict:
    """``step_losses``: each optimizer step's loss, the mean over its micro-batches and every rank's share of
    the global batch (one collective per epoch); ``peak_mem_gib_per_rank`` on CUDA."""
    losses = torch.stack(stats.losses).float() if stats.losses else torch.zeros(0, device=run.device)
    losses = losses.view(-1, run.args.accum_steps).mean(1)
    out = {}
    if run.world > 1:
        dist.all_reduce(losses)  # SUM: gloo has no AVG
        losses /= run.world
        if run.cuda:
            peaks = torch.zeros(run.world, device=run.device)
            peaks[run.rank] = torch.cuda.max_memory_allocated(run.device) / 2**30
            dist.all_reduce(peaks)
            out["peak_mem_gib_per_rank"] = peaks.tolist()
    elif run.cuda:
        out["peak_mem_gib_per_rank"] = [torch.cuda.max_memory_allocated(run.device) / 2**30]
    return dict(step_losses=losses.tolist(), **out)


def _to_device(images, device):
    """A batch of images on the device as the model's input (uint8 ones normalized there)."""
    images = images.to(device, non_blocking=True)
    return from_uint8(images) if images.dtype == torch.uint8 else images


def _synced_time(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


@torch.no_grad()
def _evaluate(run: _Run, log) -> float:
    """Top-1 accuracy on the validation split (all ranks' shares), with progress lines."""
    run.net.eval()
    correct = torch.zeros((), device=run.device)
    total = torch.zeros((), device=run.device)
    batches = len(run.val_loader)
    t0 = time.perf_counter()
    for i, (images, labels) in enumerate(run.val_loader):
        images, labels = _to_device(images, run.device), labels.to(run.device, non_blocking=True)
        with run.autocast():
            correct += (run.net(images).argmax(-1) == labels).sum()
        total += labels.numel()
        if i + 1 == 1 or (i + 1) % max(batches // 4, 1) == 0 or i + 1 == batches:
            log.validation(i + 1, batches, time.perf_counter() - t0)
    if run.world > 1:
        dist.all_reduce(correct)
        dist.all_reduce(total)
    return (correct / total.clamp_min(1)).item()


class _Progress:
    """One line per log step (epoch, a bar, step, loss, images/s, ETA of the epoch), a few during
    validation, and one per epoch."""

    def __init__(self, rank: int, steps: int, epochs: int):
        self.rank, self.steps, self.epochs = rank, steps, epochs

    def step(self, epoch, step, loss, img_s, eta):
        if self.rank:
            return
        bar = "#" * int(20 * step / self.steps)
        print(f"epoch {epoch + 1}/{self.epochs} [{bar:<20}] step {step}/{self.steps} loss {loss:.4f} "
              f"{img_s:.1f} img/s eta {int(eta) // 60}:{int(eta) % 60:02d}", flush=True, file=sys.stdout)

    def validation(self, batch, batches, elapsed):
        if self.rank:
            return
        eta = elapsed / batch * (batches - batch)
        print(f"  validation batch {batch}/{batches} eta {int(eta) // 60}:{int(eta) % 60:02d}", flush=True)

    def epoch(self, record):
        steady = f", steady {record['steady_img_s']:.1f} img/s" if record["steady_img_s"] else ""
        if record["gpu_img_s"]:
            steady += f" ({record['gpu_img_s']:.1f} img/s of GPU step time, data loading left out)"
        memory = f", peak {record['peak_mem_gib']:.2f} GiB" if record["peak_mem_gib"] is not None else ""
        print(f"epoch {record['epoch'] + 1}/{self.epochs}: val acc {record['val_acc']:.4f}, "
              f"train loss {record['train_loss'] or float('nan'):.4f}, {record['img_s']:.1f} img/s{steady}{memory}",
              flush=True)


def _plain(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


class _StopSignals:
    """SIGTERM and SIGINT set ``signum`` instead of ending the process while the context is open (in
    the main thread: handlers can only be set there), so the loop checkpoints before it exits."""

    def __init__(self):
        self.signum, self._old = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _atomic_save(obj, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _atomic(path: Path, write) -> None:
    """Write through a temp file named for this process (two runs never share one), removed on failure."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
