"""Kill a locat-train run at random moments and check what is left: ``python benchmarks/fault_injection.py``.

Runs one uninterrupted CPU training run as the reference, then the same command again and again,
each time killed with SIGKILL (no handler runs: a crash, an OOM kill, a node lost) after a random
delay and restarted with ``--resume last.pth`` (a kill before the first checkpoint restarts from
scratch). After each kill, ``last.pth`` must load (the atomic writes); at the end the resumed run's
weights must equal the reference bit for bit. Prints the counts, and writes them as JSON with
``--output``. Needs no GPU; takes about a minute per 10 kills.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--model", "locatvit_tiny", "--data", "synthetic", "--img-size", "32", "--batch-size", "8",
       "--synthetic-size", "256", "--epochs", "2", "--warmup-epochs", "0", "--lr", "1e-3", "--max-steps", "48",
       "--save-every", "1", "--log-every", "100"]


def train(output: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "locat_vit.train", *RUN, "--output", str(output)]
    if resume:
        cmd += ["--resume", str(output / "last.pth")]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/locat-fault-injection"))
    p.add_argument("--output", type=Path, help="write the counts as JSON here")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    ref, run = args.work / "reference", args.work / "killed"
    for folder in (ref, run):
        if folder.exists():
            for f in folder.iterdir():
                f.unlink()
    proc = train(ref, resume=False)
    t0 = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: {proc.stderr.read()[-2000:]}")
    ref_s = time.perf_counter() - t0
    counts = dict(kills=0, killed_before_first_checkpoint=0, killed_after_finishing=0, checkpoint_readable=0,
                  checkpoint_unreadable=0, restarts_failed=0)
    steps = []
    while counts["kills"] < args.kills:
        proc = train(run, resume=(run / "last.pth").exists())
        time.sleep(rng.uniform(0.3, ref_s))
        if proc.poll() is not None:  # it finished (or failed) before the kill
            counts["killed_after_finishing" if proc.returncode == 0 else "restarts_failed"] += 1
            if proc.returncode != 0:
                print(proc.stderr.read()[-2000:], file=sys.stderr)
            for f in (run / "last.pth", run / "best.pth", run / "log.json"):  # start over for more kills
                f.unlink(missing_ok=True)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts["kills"] += 1
        if not (run / "last.pth").exists():
            counts["killed_before_first_checkpoint"] += 1
            continue
        try:
            steps.append(torch.load(run / "last.pth", map_location="cpu", weights_only=True)["global_step"])
            counts["checkpoint_readable"] += 1
        except Exception as e:  # noqa: BLE001 - any failure to read is what this script counts
            counts["checkpoint_unreadable"] += 1
            print(f"kill {counts['kills']}: last.pth unreadable: {e}", file=sys.stderr)
            (run / "last.pth").unlink()
        print(f"kill {counts['kills']}/{args.kills}: step {steps[-1] if steps else '-'}", flush=True)
    proc = train(run, resume=(run / "last.pth").exists())
    if proc.wait() != 0:
        raise SystemExit(f"the final resume failed: {proc.stderr.read()[-2000:]}")
    want, got = weights(ref / "last.pth"), weights(run / "last.pth")
    counts["final_weights_bit_exact"] = all(torch.equal(want[k], got[k]) for k in want)
    counts["steps_at_kills"] = steps
    counts["temp_files_left"] = len(list(run.glob("*.tmp")))
    print(json.dumps(counts))
    if args.output:
        command = " ".join(["python benchmarks/fault_injection.py", *(argv or sys.argv[1:])])
        env = dict(torch=torch.__version__, python=sys.version.split()[0], cpus=os.cpu_count(),
                   date=time.strftime("%Y-%m-%d"), reference_run_s=round(ref_s, 1))
        args.output.write_text(json.dumps(dict(command=command, environment=env, **counts), indent=1))
    ok = counts["checkpoint_unreadable"] == 0 and counts["restarts_failed"] == 0 and counts["final_weights_bit_exact"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
