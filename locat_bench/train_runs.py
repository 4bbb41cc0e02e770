"""Short ``locat-train`` runs on synthetic data: LocAtViT (triton and sdpa backends) against timm's ViT.

    python -m locat_bench.train_runs --output benchmarks/results/train_<gpu>.json [--size tiny]

Each run is its own process (a clean allocator for the peak memory) with the same data, batch and
steps; the JSON holds every run's last epoch record (steady images/s after the first steps, images/s
of GPU step time with data loading left out, peak memory, loss) and the ratios to the ViT. Needs
CUDA: on a CPU it would measure the data pipeline.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .cli import environment

RUNS = {"vit": [], "locat_triton": ["--attn-backend", "triton"], "locat_sdpa": ["--attn-backend", "sdpa"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=12)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs CUDA: on a CPU these runs would time the synthetic data pipeline, not the models")

    common = ["--data", "synthetic", "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
              "--epochs", "1", "--max-steps", str(args.steps), "--synthetic-size", str(args.batch_size * (args.steps + 1)),
              "--workers", str(args.workers), "--log-every", "10", "--warmup-epochs", "0"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(RUNS.items()):
            model = f"vit_{args.size}_patch16_224" if name == "vit" else f"locatvit_{args.size}"
            cmd = [sys.executable, "-m", "locat_vit.train", "--model", model, *common, *extra, "--output", f"{tmp}/{name}"]
            print(f"[{i + 1}/{len(RUNS)}] {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
            record = json.loads(Path(tmp, name, "log.json").read_text())["epochs"][-1]
            results[name] = dict(model=model, command=" ".join(cmd[1:]), **record)
    ratios = over_vit(results)
    for name, r in results.items():
        x = ratios[name]
        print(f"  {name:<13} {r['steady_img_s']:8.1f} img/s ({x['steady_img_s']:.2f}x ViT), GPU step time "
              f"{r['gpu_img_s']:8.1f} img/s ({x['gpu_img_s']:.2f}x), peak {r['peak_mem_gib']:.2f} GiB "
              f"({x['peak_mem_gib']:.2f}x), loss {r['train_loss']:.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(dict(environment=environment("cuda"), runs=results, ratios=ratios), indent=1))
    print(f"wrote {args.output}")
    return 0


def over_vit(results: dict) -> dict:
    """Each run's steady images/s (end to end), images/s of GPU step time (data loading left out)
    and peak memory, over the ViT's."""
    keys = ("steady_img_s", "gpu_img_s", "peak_mem_gib")
    return {name: {k: r[k] / results["vit"][k] for k in keys} for name, r in results.items()}


if __name__ == "__main__":
    sys.exit(main())
