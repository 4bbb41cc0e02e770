"""Data-parallel ``locat-train`` runs on one machine's GPUs: scaling and the loss curve against one GPU.

    python -m locat_bench.ddp_runs --output benchmarks/results/ddp_<gpu>.json [--gpus 2] [--dry-run]

Every run is ``locat-train`` on synthetic data in its own process; the multi-GPU ones through
``torchrun --standalone --nproc_per_node G -m locat_vit.train`` (one process per GPU, ``--batch-size``
per process). Three parts:

- **Scaling**: LocAtViT (triton backend) and timm's ViT of the same size on 1 and on G GPUs with the
  same batch per GPU (weak scaling), at ``--img-size`` and at ``--short-img-size``: images/s after
  the first steps (end to end, and of GPU step time with data loading left out), peak memory per GPU.
- **Loss curve**: LocAtViT on G GPUs against one GPU with the same global batch (``--accum-steps G``)
  and the same seed, and a second one-GPU run with another seed. With the same seed the runs see
  the same samples in every global batch (the sampler shuffles once and deals the global batch out
  to the ranks), so their per-step losses differ only by floating-point reduction order; the
  second seed (another init and data order) gives the noise they are judged against: the G-GPU
  curve matches when its distance to the same-seed curve is below the two seeds' distance.
- The JSON holds every run's command, world size, epoch record (per-step losses of the curve runs)
  and the summary (``scaling``, ``curve``), with GPU names and versions.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .cli import environment

SMOOTH = 10  # steps in the moving average the curves are compared on
PARTS = ("scaling", "curve", "short")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m locat_bench.ddp_runs", description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--gpus", type=int, default=2, help="GPUs of the data-parallel runs")
    p.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="per GPU")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of the loss-curve runs")
    p.add_argument("--throughput-steps", type=int, default=80, help="optimizer steps of the scaling runs")
    p.add_argument("--short-img-size", type=int, default=384, help="a second, shorter scaling run (0: none)")
    p.add_argument("--short-batch-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100,
                   help="synthetic classes: enough that the loss falls over the whole curve, not in ten steps")
    p.add_argument("--workers", type=int, default=10, help="data loader processes per GPU")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                   help="scaling: the runs at --img-size; curve: the loss curves; short: the runs at --short-img-size")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.gpus < 2:
        p.error(f"--gpus must be >= 2, got {args.gpus}")
    if not args.dry_run and torch.cuda.device_count() < args.gpus:
        p.error(f"needs {args.gpus} CUDA GPUs, {torch.cuda.device_count()} visible (--dry-run prints the commands)")

    runs = plan(args)
    if args.dry_run:
        for name, cmd in runs.items():
            print(f"{name}: {' '.join(cmd)}")
        return 0
    env = environment("cuda")
    env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    command = " ".join(["python", "-m", "locat_bench.ddp_runs", *(sys.argv[1:] if argv is None else argv)])
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save(records, **summary):  # after every run: a run cut short keeps what it measured
        args.output.write_text(json.dumps(dict(environment=env, command=command, runs=records, **summary), indent=1))

    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cmd) in enumerate(runs.items()):
            print(f"[{i + 1}/{len(runs)}] {name}: {' '.join(cmd)}", flush=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", *cmd, "--output", f"{tmp}/{name}"], check=True)
            record = json.loads(Path(tmp, name, "log.json").read_text())["epochs"][-1]
            records[name] = dict(command=" ".join(["python", "-m", *cmd]), wall_s=time.perf_counter() - t, **record)
            save(records)
    summary = dict(scaling=scaling(records, args.gpus))
    if "curve" in args.parts:
        summary["curve"] = curve(records, args.gpus)
    save(records, **summary)
    for row in summary["scaling"]:
        print(f"  {row['model']:<26} {row['img_size']} px: {row['img_s_1']:8.1f} -> {row['img_s_n']:8.1f} img/s "
              f"({row['speedup']:.2f}x on {args.gpus} GPUs; GPU step time {row['gpu_speedup']:.2f}x), peak "
              f"{max(row['peak_mem_gib_per_rank_n']):.2f} GiB per GPU")
    c = summary.get("curve")
    if c:
        print(f"  loss curve, {args.gpus} GPUs vs 1 GPU (same global batch and seed): mean |diff| "
              f"{c['n_vs_same_seed']['mean_abs']:.4f}; two seeds on 1 GPU: {c['seed_vs_seed']['mean_abs']:.4f} -> "
              f"{'matches' if c['matches'] else 'DOES NOT match'}")
    print(f"wrote {args.output}")
    return 0


def plan(args) -> dict[str, list[str]]:
    """Run name -> ``python -m`` arguments (without --output)."""
    G = args.gpus
    locat, vit = f"locatvit_{args.size}", f"vit_{args.size}_patch16_224"

    def train(gpus, model, img, batch, steps, seed=0, accum=1):
        launch = ["locat_vit.train"] if gpus == 1 else [
            "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), "-m", "locat_vit.train"]
        return [*launch, "--model", model, *(["--attn-backend", "triton"] if model == locat else []),
                "--data", "synthetic", "--num-classes", str(args.num_classes), "--img-size", str(img),
                "--batch-size", str(batch),
                "--accum-steps", str(accum), "--epochs", "1", "--max-steps", str(steps),
                "--synthetic-size", str(batch * G * (steps + 1)), "--warmup-epochs", "0.1", "--lr", "5e-4",
                "--seed", str(seed), "--workers", str(args.workers), "--log-every", "20"]

    def scaling_runs(img, batch):
        return {f"{model}_{img}_{gpus}gpu": train(gpus, model, img, batch, args.throughput_steps)
                for model in (locat, vit) for gpus in (1, G)}

    runs = scaling_runs(args.img_size, args.batch_size) if "scaling" in args.parts else {}
    if "curve" in args.parts:
        runs[f"curve_{G}gpu"] = train(G, locat, args.img_size, args.batch_size, args.steps)
        for seed in (0, 1):
            runs[f"curve_1gpu_accum{G}_seed{seed}"] = train(1, locat, args.img_size, args.batch_size, args.steps,
                                                            seed=seed, accum=G)
    if args.short_img_size and "short" in args.parts:
        runs.update(scaling_runs(args.short_img_size, args.short_batch_size))
    return runs


def scaling(records: dict, gpus: int) -> list[dict]:
    """Per (model, image size): images/s on 1 and on ``gpus`` GPUs, their ratio, peak memory per GPU."""
    rows = []
    for name, one in records.items():
        if not name.endswith("_1gpu"):
            continue
        many = records.get(name.removesuffix("_1gpu") + f"_{gpus}gpu")
        if many is None:
            continue
        model, img = name.removesuffix("_1gpu").rsplit("_", 1)
        rows.append(dict(model=model, img_size=int(img), img_s_1=one["steady_img_s"], img_s_n=many["steady_img_s"],
                         speedup=many["steady_img_s"] / one["steady_img_s"],
                         gpu_speedup=many["gpu_img_s"] / one["gpu_img_s"],
                         peak_mem_gib_per_rank_1=one.get("peak_mem_gib_per_rank"),
                         peak_mem_gib_per_rank_n=many.get("peak_mem_gib_per_rank")))
    return rows


def curve(records: dict, gpus: int) -> dict:
    """Distances between the smoothed per-step loss curves: G GPUs against one GPU with the same
    seed, and the two one-GPU seeds; ``matches``: the first is below the second."""
    n = records[f"curve_{gpus}gpu"]["step_losses"]
    same, other = (records[f"curve_1gpu_accum{gpus}_seed{s}"]["step_losses"] for s in (0, 1))
    a, b = distance(n, same), distance(same, other)
    return dict(smooth_steps=SMOOTH, n_vs_same_seed=a, seed_vs_seed=b, matches=a["mean_abs"] < b["mean_abs"],
                first_last={k: (v[0], v[-1]) for k, v in (("n_gpus", n), ("one_gpu", same), ("one_gpu_seed1", other))})


def distance(x: list[float], y: list[float]) -> dict:
    """Mean and max absolute difference of two loss curves after a SMOOTH-step moving average."""
    if len(x) != len(y) or len(x) < SMOOTH:
        raise ValueError(f"curves of {len(x)} and {len(y)} steps: need equal lengths >= {SMOOTH}")
    kernel = torch.ones(1, 1, SMOOTH) / SMOOTH
    sx, sy = (torch.nn.functional.conv1d(torch.tensor(v, dtype=torch.float64)[None, None], kernel.double())[0, 0]
              for v in (x, y))
    d = (sx - sy).abs()
    return dict(mean_abs=float(d.mean()), max_abs=float(d.max()))


if __name__ == "__main__":
    sys.exit(main())
