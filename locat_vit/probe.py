"""``locat-probe``: a segmentation probe on frozen features, scored by mean IoU.

    locat-probe --model locatvit_tiny --vit vit_tiny_patch16_224 --data synthetic

For each model (frozen, built with a dynamic image size and padding), a small head on its patch
features, upsampled bilinearly to the image, is trained with cross-entropy and scored by mIoU on the
validation split: the comparison the paper makes. Two protocols:

- ``published`` (default), the paper's segmentation evaluation: the last block's output as a map,
  before the final norm and before PRR (``forward_intermediates(x, indices=[last], norm=False,
  output_fmt="NCHW", intermediates_only=True)``, the same call for LocAtViT and ViT); head 1x1 conv
  to 512 channels (no bias) + GroupNorm(1 group) + GELU + 1x1 classifier; AdamW (lr 1e-3, weight
  decay 0.01) under a one-cycle schedule (25% linear warm-up from lr/1e4, linear decay to lr/1e8).
  The paper trains 20000 steps at batch 32 and 512 px; ``--steps``, ``--batch-size`` and
  ``--img-size`` scale it down.
- ``linear``: one 1x1 convolution on LocAtViT's ``forward_dense`` (after the final norm and PRR) or a
  ViT's normalized patch tokens; AdamW at a constant lr (``--lr``, default 1e-2).

``--data`` is ``synthetic`` (shapes with per-pixel labels, generated on the fly) or a folder in
ADE20K's layout (``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``,
label 0 ignored and the rest shifted down by one).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data import SyntheticScenes
from .locatvit import LocAtViT, load_checkpoint

__all__ = ["ADE20K", "confusion", "mean_iou", "main"]

IGNORE = 255


class ADE20K(Dataset):
    """ADE20K's layout: images/<split>/*.jpg with annotations/<split>/*.png of the same stem."""

    def __init__(self, root, split: str, img_size: int):
        self.images = sorted((Path(root) / "images" / split).glob("*.jpg"))
        self.labels = Path(root) / "annotations" / split
        if not self.images:
            raise FileNotFoundError(f"no images in {Path(root) / 'images' / split}")
        missing = [p.stem for p in self.images if not (self.labels / f"{p.stem}.png").is_file()]
        if missing:
            raise FileNotFoundError(f"no annotation for {missing[:5]} in {self.labels}")
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        s = self.img_size
        image = Image.open(self.images[index]).convert("RGB").resize((s, s), Image.BILINEAR)
        label = Image.open(self.labels / f"{self.images[index].stem}.png").resize((s, s), Image.NEAREST)
        image = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(s, s, 3).permute(2, 0, 1)
        label = torch.frombuffer(bytearray(label.tobytes()), dtype=torch.uint8).reshape(s, s).long()
        label = torch.where(label == 0, IGNORE, label - 1)  # ADE20K: 0 is "other", ignored
        return (image.float() / 255 - 0.5) / 0.5, label


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows the target class, columns the prediction; IGNORE skipped."""
    keep = target != IGNORE
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(conf: torch.Tensor) -> float:
    """Mean over classes present in target or prediction of TP / (TP + FP + FN)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


PROTOCOLS = ("published", "linear")
# The paper's head and optimizer (its evaluations/segmentation config).
HEAD_CHANNELS = 512
PUBLISHED_LR, WEIGHT_DECAY = 1e-3, 0.01
WARMUP_SHARE, LR_DIVISOR = 0.25, 1e4  # one-cycle: from lr / 1e4 up over 25% of the steps, down to lr / 1e8


def features(model, x, protocol: str):
    """(B, C, gh, gw) frozen features of ``protocol`` (see the module docstring)."""
    if protocol == "published":
        last = len(model.blocks) - 1
        return model.forward_intermediates(x, indices=[last], norm=False, output_fmt="NCHW",
                                           intermediates_only=True)[0]
    if isinstance(model, LocAtViT):
        return model.forward_dense(x)
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, *model.patch_embed.dynamic_feat_size(x.shape[-2:]))


def make_head(protocol: str, channels: int, num_classes: int) -> torch.nn.Module:
    """The published head (1x1 conv, GroupNorm of one group, GELU, 1x1 classifier) or one 1x1 conv."""
    if protocol == "linear":
        return torch.nn.Conv2d(channels, num_classes, 1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False),  # a conv before a norm needs no bias
        torch.nn.GroupNorm(1, HEAD_CHANNELS),
        torch.nn.GELU(),
        torch.nn.Conv2d(HEAD_CHANNELS, num_classes, 1),
    )


def make_optimizer(protocol: str, head: torch.nn.Module, lr: float, steps: int):
    """AdamW and its per-step schedule: one-cycle (published) or constant (linear)."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    if protocol == "linear":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    # One-cycle as the paper's (mmcv) schedule has it, also for a handful of steps (torch's
    # OneCycleLR divides by zero below 8): up linearly until step ``top``, then down to the last step.
    top = max(int(WARMUP_SHARE * steps) - 1, 1)
    start, end = 1 / LR_DIVISOR, 1 / LR_DIVISOR**2

    def one_cycle(step):
        if step <= top:
            return start + (1 - start) * step / top
        return 1 + (end - 1) * min((step - top) / max(steps - 1 - top, 1), 1.0)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, one_cycle)


def probe(model, train_set, val_set, num_classes, *, steps, batch_size, lr, device, protocol="published",
          log=print) -> float:
    """Train the protocol's head on frozen features for ``steps`` steps; return the validation mIoU."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    model.eval().requires_grad_(False)
    head = make_head(protocol, model.embed_dim, num_classes).to(device)
    opt, schedule = make_optimizer(protocol, head, lr, steps)
    loader = DataLoader(train_set, batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))

    def logits(x):  # the frozen model needs no graph: only the head's parameters require grad
        with torch.no_grad():
            feats = features(model, x, protocol).float()
        return F.interpolate(head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)

    step = 0
    while step < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(logits(x), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            step += 1
            if step == 1 or step % max(steps // 5, 1) == 0 or step == steps:
                log(f"  step {step}/{steps} loss {loss.item():.4f}")
            if step >= steps:
                break
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    with torch.no_grad():
        for x, y in DataLoader(val_set, batch_size):
            x, y = x.to(device), y.to(device)
            conf += confusion(logits(x).argmax(1), y, num_classes)
    return mean_iou(conf.cpu())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="locat-probe", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="locatvit_tiny", help="a registered LocAtViT")
    p.add_argument("--vit", default="vit_tiny_patch16_224", help="the timm ViT to compare with ('' for none)")
    p.add_argument("--pretrained", action="store_true",
                   help="both models' published weights from the Hugging Face hub (needs a network or the hub cache)")
    p.add_argument("--pretrained-file", type=Path, help="checkpoint for --model")
    p.add_argument("--vit-pretrained-file", type=Path, help="checkpoint for --vit")
    p.add_argument("--protocol", default="published", choices=PROTOCOLS,
                   help="published: the paper's head on the last block's output; linear: a 1x1 conv after PRR")
    p.add_argument("--data", default="synthetic", help="'synthetic' or an ADE20K-layout folder")
    p.add_argument("--num-classes", type=int, help="default: 5 (synthetic) or 150 (ADE20K)")
    p.add_argument("--img-size", type=int, default=96, help="the paper: 512")
    p.add_argument("--steps", type=int, default=60, help="the paper: 20000")
    p.add_argument("--batch-size", type=int, default=16, help="the paper: 32")
    p.add_argument("--lr", type=float, help=f"default: {PUBLISHED_LR} (published) or 1e-2 (linear)")
    p.add_argument("--output", type=Path, help="write the scores as JSON here")
    args = p.parse_args(argv)
    if args.img_size < 16 or args.steps < 1 or args.batch_size < 1:
        p.error("--img-size must be >= 16, --steps and --batch-size >= 1")
    if args.model not in timm.list_models("locatvit_*"):
        p.error(f"unknown model {args.model!r}; registered LocAtViTs: {timm.list_models('locatvit_*')}")
    if args.vit and not timm.is_model(args.vit):
        p.error(f"unknown timm model {args.vit!r}")
    for path in (args.pretrained_file, args.vit_pretrained_file):
        if path is not None and not path.is_file():
            p.error(f"checkpoint {path} does not exist")
    lr = args.lr if args.lr is not None else (PUBLISHED_LR if args.protocol == "published" else 1e-2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.data == "synthetic":
        classes = args.num_classes or 5
        train, val = (SyntheticScenes(n, args.img_size, classes, seed=s) for n, s in ((256, 0), (64, 1)))
    else:
        try:
            train, val = (ADE20K(args.data, split, args.img_size) for split in ("training", "validation"))
        except FileNotFoundError as e:
            p.error(str(e))
        classes = args.num_classes or 150

    torch.manual_seed(0)
    # As the paper's evaluation builds them: any image size, padded to whole patches.
    kwargs = dict(img_size=args.img_size, dynamic_img_size=True, dynamic_img_pad=True, pretrained=args.pretrained)
    names = [(args.model, args.pretrained_file)] + ([(args.vit, args.vit_pretrained_file)] if args.vit else [])
    scores = {}
    for name, ckpt in names:
        model = timm.create_model(name, **kwargs)
        if ckpt is not None:
            try:
                load_checkpoint(model, ckpt)
            except ValueError as e:
                p.error(str(e))
        elif not args.pretrained:
            print(f"note: {name} is randomly initialised (no --pretrained or checkpoint): its mIoU measures "
                  "the architecture at init, not the published weights")
        print(f"{name}: {args.protocol} probe, {args.steps} steps on {args.data}, {args.img_size} px")
        scores[name] = probe(model.to(device), train, val, classes, steps=args.steps, batch_size=args.batch_size,
                             lr=lr, device=device, protocol=args.protocol)
        print(f"{name}: mIoU {scores[name]:.4f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.output.write_text(json.dumps(dict(args=dict(settings, lr=lr), miou=scores), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
