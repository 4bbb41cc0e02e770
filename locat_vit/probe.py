"""``locat-probe``: a linear segmentation probe on frozen dense features, scored by mean IoU.

    locat-probe --model locatvit_tiny --vit vit_tiny_patch16_224 --data synthetic --img-size 64 --steps 100

For each model, a 1x1 convolution on its frozen patch features (LocAtViT: ``forward_dense``, after
PRR; a timm ViT: its normalized patch tokens), upsampled bilinearly to the image, is trained with
cross-entropy and scored by mIoU on the validation split: the comparison the paper makes. ``--data``
is ``synthetic`` (shapes with per-pixel labels, generated on the fly) or a folder in ADE20K's layout
(``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``, label 0
ignored and the rest shifted down by one).
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


def dense_features(model, x):
    """(B, C, gh, gw) frozen features: LocAtViT's forward_dense, else a timm ViT's normalized patch tokens."""
    if isinstance(model, LocAtViT):
        return model.forward_dense(x)
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, *model.patch_embed.grid_size)


def probe(model, train_set, val_set, num_classes, *, steps, batch_size, lr, device, log=print) -> float:
    """Train a 1x1-conv head on frozen features for ``steps`` steps; return the validation mIoU."""
    model.eval().requires_grad_(False)
    head = torch.nn.Conv2d(model.embed_dim, num_classes, 1).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    loader = DataLoader(train_set, batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))

    def logits(x):  # the frozen model needs no graph: only the head's parameters require grad
        with torch.no_grad():
            feats = dense_features(model, x).float()
        return F.interpolate(head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)

    step = 0
    while step < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(logits(x), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % max(steps // 5, 1) == 0 or step == steps:
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
    p = argparse.ArgumentParser(prog="locat-probe", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="locatvit_tiny", help="a registered LocAtViT")
    p.add_argument("--vit", default="vit_tiny_patch16_224", help="the timm ViT to compare with ('' for none)")
    p.add_argument("--pretrained-file", type=Path, help="checkpoint for --model")
    p.add_argument("--vit-pretrained-file", type=Path, help="checkpoint for --vit")
    p.add_argument("--data", default="synthetic", help="'synthetic' or an ADE20K-layout folder")
    p.add_argument("--num-classes", type=int, help="default: 5 (synthetic) or 150 (ADE20K)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--output", type=Path, help="write the scores as JSON here")
    args = p.parse_args(argv)
    if args.img_size % 16 or args.steps < 1 or args.batch_size < 1:
        p.error("--img-size must be a multiple of 16, --steps and --batch-size >= 1")
    if args.model not in timm.list_models("locatvit_*"):
        p.error(f"unknown model {args.model!r}; registered LocAtViTs: {timm.list_models('locatvit_*')}")
    if args.vit and not timm.is_model(args.vit):
        p.error(f"unknown timm model {args.vit!r}")
    for path in (args.pretrained_file, args.vit_pretrained_file):
        if path is not None and not path.is_file():
            p.error(f"checkpoint {path} does not exist")
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
    models = {args.model: (timm.create_model(args.model, img_size=args.img_size), args.pretrained_file)}
    if args.vit:
        models[args.vit] = (timm.create_model(args.vit, img_size=args.img_size), args.vit_pretrained_file)
    scores = {}
    for name, (model, ckpt) in models.items():
        if ckpt is not None:
            try:
                load_checkpoint(model, ckpt)
            except ValueError as e:
                p.error(str(e))
        print(f"{name}: linear probe, {args.steps} steps on {args.data}")
        scores[name] = probe(model.to(device), train, val, classes, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, device=device)
        print(f"{name}: mIoU {scores[name]:.4f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, miou=scores), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
