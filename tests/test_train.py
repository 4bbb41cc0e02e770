"""locat-train on CPU: the loss falls, resume reproduces the uninterrupted run, DDP (gloo, 2 processes)
gives the single-process update, and bad arguments fail before training with a clear message."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from locat_vit import data as locat_data
from locat_vit.train import main

SMALL = ["--model", "locatvit_tiny", "--data", "synthetic", "--img-size", "32", "--batch-size", "8",
         "--synthetic-size", "64", "--lr", "1e-3", "--warmup-epochs", "0", "--log-every", "100"]
ROOT = Path(__file__).resolve().parents[1]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_few_steps_lower_the_loss(tmp_path):
    assert main(SMALL + ["--epochs", "4", "--output", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "log.json").read_text())
    losses = [e["train_loss"] for e in log["epochs"]]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    assert (tmp_path / "last.pth").is_file() and (tmp_path / "best.pth").is_file()
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    cuda = torch.cuda.is_available()
    for e in log["epochs"]:  # 8 steps an epoch, the first 5 left out of the steady rate
        assert e["steady_img_s"] > 0 and (e["peak_mem_gib"] > 0 if cuda else e["peak_mem_gib"] is None)
        assert (e["gpu_img_s"] > 0) if cuda else e["gpu_img_s"] is None


def test_progress_from_the_first_step_to_the_last_and_through_validation(tmp_path, capsys):
    assert main(SMALL + ["--epochs", "1", "--max-steps", "3", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    steps = re.findall(r"step (\d+)/8 loss", out)
    assert steps == ["1", "3"], out  # the first step and the last one (--max-steps), though --log-every is 100
    batches = re.findall(r"validation batch (\d+)/(\d+)", out)
    assert batches[0][0] == "1" and batches[-1][0] == batches[-1][1], out
    assert out.index("validation batch") < out.index("val acc")


@pytest.mark.parametrize("model", [["--model", "locatswin_tiny"], ["--model", "locatjumbo_tiny"],
                                   ["--model", "locatvit_tiny_rope_mixed"], ["--model", "swin_tiny_patch4_window7_224"],
                                   ["--from-vit", "swin_tiny_patch4_window7_224"]], ids=lambda m: m[1])
def test_every_family_trains(tmp_path, model):
    assert main(SMALL[2:] + model + ["--epochs", "1", "--max-steps", "2", "--output", str(tmp_path)]) == 0
    w = _weights(tmp_path / "last.pth")
    assert any(".attn.gaug." in k for k in w) == (model[0] == "--from-vit" or "locat" in model[1])
    assert json.loads((tmp_path / "log.json").read_text())["epochs"][-1]["global_step"] == 2


def test_timm_vit_trains_unchanged_as_the_baseline(tmp_path):
    assert main(SMALL + ["--model", "vit_tiny_patch16_224", "--epochs", "1", "--max-steps", "2",
                         "--output", str(tmp_path)]) == 0
    w = _weights(tmp_path / "last.pth")
    assert "blocks.0.attn.qkv.weight" in w and not any("gaug" in k for k in w)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run = SMALL + ["--epochs", "2", "--synthetic-size", "32"]  # 4 steps an epoch: 6 steps cross into the second
    main(run + ["--max-steps", "6", "--output", str(a)])
    main(run + ["--max-steps", "3", "--output", str(b)])  # stops inside the first epoch
    # --max-steps is the run's total: the same command resumed ends where the uninterrupted one did
    main(run + ["--max-steps", "6", "--output", str(b), "--resume", str(b / "last.pth")])
    wa, wb = _weights(a / "last.pth"), _weights(b / "last.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(p / "last.pth", weights_only=True) for p in (a, b))
    assert sa["global_step"] == sb["global_step"] == 6 and sa["step_in_epoch"] == sb["step_in_epoch"]
    # log.json: one record per epoch, also where an epoch was resumed mid-way
    la, lb = (json.loads((p / "log.json").read_text())["epochs"] for p in (a, b))
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb] == [0, 1]
    assert lb[0]["steps"] == 4 and lb[0]["resumed_at_step"] == 3 and "resumed_at_step" not in la[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(tmp_path, monkeypatch):
    """On the CPU with gloo, also on a machine with GPUs (which may have fewer than two)."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--model", "locatvit_tiny", "--data", "synthetic", "--img-size", "32", "--synthetic-size", "64",
              "--epochs", "1", "--max-steps", "2", "--warmup-epochs", "0", "--lr", "1e-3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    main(common + ["--batch-size", "8", "--output", str(one)])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "locat_vit.train"] + common + ["--batch-size", "4", "--output", str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    w1, w2 = _weights(one / "last.pth"), _weights(two / "last.pth")
    # The same samples in the same global batches. AdamW normalizes every update, so a weight whose
    # gradient is near zero can move by up to lr per step on rounding alone (the gradients themselves
    # are compared exactly in test_ddp_gradients_equal_single_process).
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=2 * 1e-3, msg=k)
    assert sum(int((w2[k] - w1[k]).abs().gt(1e-6).sum()) for k in w1) < 0.01 * sum(v.numel() for v in w1.values())
    # The log's per-step loss is the global batch's under DDP: both ranks' halves averaged
    r1, r2 = (json.loads((p / "log.json").read_text())["epochs"][-1] for p in (one, two))
    assert (r1["world_size"], r2["world_size"]) == (1, 2) and len(r1["step_losses"]) == len(r2["step_losses"]) == 2
    torch.testing.assert_close(r2["step_losses"], r1["step_losses"], rtol=1e-4, atol=0)
    assert r2["train_loss"] == pytest.approx(sum(r2["step_losses"]) / 2)


def test_synthetic_uint8_images_are_the_float_ones_quantized():
    kwargs = dict(length=4, img_size=24, num_classes=3, seed=5)
    floats, bytes_ = locat_data.SyntheticClassification(**kwargs), locat_data.SyntheticClassification(**kwargs, uint8=True)
    for i in range(4):
        (x, y), (u, yu) = floats[i], bytes_[i]
        assert u.dtype == torch.uint8 and u.shape == x.shape and yu == y
        assert (locat_data.from_uint8(u) - x).abs().max() <= 1 / 255 + 1e-6  # half a step of 2/255


def test_accumulation_runs_whole_steps_only(tmp_path, monkeypatch):
    """5 batches an epoch with --accum-steps 2: 2 steps of 2 micro-batches; the fifth batch is not
    trained on (its gradients would have leaked into the next epoch's first step)."""
    import locat_vit.train as train

    calls = []
    loss = train.F.cross_entropy
    monkeypatch.setattr(train.F, "cross_entropy", lambda *a, **k: calls.append(1) or loss(*a, **k))
    assert main(SMALL + ["--synthetic-size", "40", "--accum-steps", "2", "--epochs", "2",
                         "--output", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "log.json").read_text())["epochs"]
    assert len(calls) == 8 and [len(e["step_losses"]) for e in log] == [2, 2] and log[-1]["global_step"] == 4


def _ddp_worker(rank, world, port, x, y, path):
    import torch.distributed as dist
    import torch.nn.functional as F

    import locat_vit  # noqa: F401

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(timm.create_model("locatvit_tiny", img_size=32, num_classes=5))
    F.cross_entropy(model(x[rank::world]), y[rank::world]).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.module.named_parameters()}, path)
    dist.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    mp.spawn(_ddp_worker, args=(2, _free_port(), x, y, tmp_path / "grads.pt"), nprocs=2)
    torch.manual_seed(0)
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=5)
    F.cross_entropy(model(x), y).backward()
    ddp = torch.load(tmp_path / "grads.pt", weights_only=True)
    for k, p in model.named_parameters():  # equal up to float32 summation order
        assert (ddp[k] - p.grad).norm() <= 1e-4 * p.grad.norm(), k


def test_from_vit_with_a_pretrained_file_and_a_new_head(tmp_path, capsys):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=1000)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    assert main(["--from-vit", "vit_tiny_patch16_224", "--pretrained-file", str(tmp_path / "vit.pth"),
                 "--data", "synthetic", "--img-size", "32", "--batch-size", "8", "--synthetic-size", "16",
                 "--epochs", "1", "--max-steps", "1", "--output", str(tmp_path / "run")]) == 0
    assert "head.weight: checkpoint (1000, 192), model (10, 192): new head" in capsys.readouterr().out
    w = _weights(tmp_path / "run" / "last.pth")
    assert "blocks.0.attn.gaug.log_var.weight" in w


@pytest.mark.parametrize("extra,words", [
    (["--data", "/nonexistent/imagenet"], "no train/ or val/ folder"),
    (["--model", "locatvit_huge"], "unknown model 'locatvit_huge'"),
    (["--model", "resnet18"], "resnet18 is not a ViT, Swin or RoPE-ViT (it comes from timm.models.resnet)"),
    (["--model", "vit_tiny_patch16_224", "--attn-backend", "sdpa"], "--attn-backend is for LocAtViT"),
    (["--from-vit", "vit_tiny_patch16_224"], "give --model or --from-vit, not both"),
    (["--resume", "x.pth", "--pretrained-file", "y.pth"], "--resume carries its own weights"),
    (["--img-size", "40"], "is not a multiple of patch_size (16, 16)"),  # LocAtViT's own check
    (["--model", "vit_tiny_patch16_224", "--img-size", "40"], "multiple of vit_tiny_patch16_224's patch size 16"),
    (["--accum-steps", "0"], "--accum-steps must be >= 1"),
    (["--resume", "/nonexistent/last.pth"], "does not exist"),
])
def test_bad_arguments_fail_before_training(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as e:
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path)] + extra)
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "last.pth").exists()


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path, capsys):
    state = timm.create_model("locatvit_small", img_size=32).state_dict()
    torch.save(state, tmp_path / "small.pth")
    with pytest.raises(SystemExit):
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path / "run"), "--pretrained-file", str(tmp_path / "small.pth")])
    err = capsys.readouterr().err
    # one summary: how many keys are mis-shaped, the first few named with both shapes
    assert "does not fit" in err and re.search(r"mis-shaped \(\d+\): blocks\.0\.attn\.\S+: checkpoint \(", err)


def test_non_finite_images_stop_with_a_clear_error(tmp_path, monkeypatch):
    real = locat_data.SyntheticClassification.__getitem__

    def poisoned(self, i):  # float images, as an image folder gives them (the synthetic ones come as uint8)
        image, label = real(self, i)
        image = image.float()
        image[0, 0, 0] = float("nan")
        return image, label

    monkeypatch.setattr(locat_data.SyntheticClassification, "__getitem__", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite values in the input images"):
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path)])


def test_train_runs_ratios_over_the_vit():
    from locat_bench.train_runs import over_vit

    runs = {"vit": dict(steady_img_s=100.0, gpu_img_s=400.0, peak_mem_gib=2.0),
            "locat_triton": dict(steady_img_s=90.0, gpu_img_s=300.0, peak_mem_gib=2.5)}
    assert over_vit(runs)["locat_triton"] == dict(steady_img_s=0.9, gpu_img_s=0.75, peak_mem_gib=1.25)


def test_ddp_runs_compare_runs_that_share_every_global_batch(capsys):
    """The loss-curve runs of locat_bench.ddp_runs: G processes against one with G accumulated
    micro-batches, the same data and seed (so the same samples in every global batch), and a second seed."""
    from locat_bench import ddp_runs

    assert ddp_runs.main(["--output", "unused.json", "--gpus", "4", "--dry-run"]) == 0
    runs = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())

    def flags(name):
        words = runs[name].split()
        return {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}

    many, same, other = (flags(n) for n in ("curve_4gpu", "curve_1gpu_accum4_seed0", "curve_1gpu_accum4_seed1"))
    assert runs["curve_4gpu"].startswith("torch.distributed.run --standalone --nproc_per_node 4 -m locat_vit.train")
    assert many["--nproc_per_node"] == "4" and many["--accum-steps"] == "1" and same["--accum-steps"] == "4"
    for key in ("--batch-size", "--synthetic-size", "--max-steps", "--model", "--lr", "--warmup-epochs"):
        assert many[key] == same[key] == other[key], key
    assert many["--seed"] == same["--seed"] != other["--seed"]
    for img in ("224", "384"):  # scaling: LocAtViT and ViT on 1 and 4 GPUs, the same batch per GPU
        for model in ("locatvit_base", "vit_base_patch16_224"):
            one, four = flags(f"{model}_{img}_1gpu"), flags(f"{model}_{img}_4gpu")
            assert one["--batch-size"] == four["--batch-size"] and one["--img-size"] == four["--img-size"] == img


def test_ddp_runs_judge_a_curve_against_the_seed_noise():
    from locat_bench.ddp_runs import SMOOTH, curve, distance, scaling

    base = [2.0 * 0.98 ** i for i in range(50)]
    assert distance(base, base) == dict(mean_abs=0.0, max_abs=0.0)
    shifted = distance(base, [x + 0.1 for x in base])
    assert shifted["mean_abs"] == pytest.approx(0.1) and shifted["max_abs"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="equal lengths"):
        distance(base, base[:-1])
    with pytest.raises(ValueError, match=f">= {SMOOTH}"):
        distance(base[:SMOOTH - 1], base[:SMOOTH - 1])
    records = {"curve_2gpu": dict(step_losses=[x + 0.01 for x in base]),
               "curve_1gpu_accum2_seed0": dict(step_losses=base),
               "curve_1gpu_accum2_seed1": dict(step_losses=[x * 1.1 for x in base])}
    assert curve(records, 2)["matches"]
    records["curve_2gpu"] = dict(step_losses=[x * 1.2 for x in base])
    assert not curve(records, 2)["matches"]
    rows = scaling({"m_224_1gpu": dict(steady_img_s=100.0, gpu_img_s=110.0, peak_mem_gib_per_rank=[3.0]),
                    "m_224_2gpu": dict(steady_img_s=190.0, gpu_img_s=200.0, peak_mem_gib_per_rank=[3.1, 3.1])}, 2)
    assert rows == [dict(model="m", img_size=224, img_s_1=100.0, img_s_n=190.0, speedup=1.9,
                         gpu_speedup=pytest.approx(200 / 110), peak_mem_gib_per_rank_1=[3.0],
                         peak_mem_gib_per_rank_n=[3.1, 3.1])]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_triton_backend_without_cuda_fails_before_any_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit) as e:
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path / "run"), "--attn-backend", "triton"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs a CUDA GPU" in err and "TRITON_INTERPRET=1" in err
    assert not (tmp_path / "run").exists()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 224)" in out and "(default: synthetic)" in out and "default: None" not in out


@pytest.mark.parametrize("content", [b"", b"garbage"], ids=["empty", "garbage"])
def test_resume_from_an_unreadable_file_is_one_line(tmp_path, capsys, content):
    (tmp_path / "last.pth").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path / "run"), "--resume", str(tmp_path / "last.pth")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "is not a readable checkpoint" in err and "weights_only=False" not in err


def test_a_progress_line_from_the_first_step(tmp_path, capsys):
    """--log-every 100 on an 8-step epoch: the first step and the last still print a progress line."""
    main(SMALL + ["--epochs", "1", "--output", str(tmp_path)])
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1 [")]
    assert [line.split(" step ")[1].split()[0] for line in steps] == ["1/8", "8/8"]


def test_from_vit_takes_the_patch_size_from_the_model(tmp_path, capsys):
    """A patch-14 ViT: 28 px is two patches a side (trains), 32 px is refused naming the patch size."""
    base = ["--from-vit", "vit_small_patch14_dinov2", "--data", "synthetic", "--batch-size", "4", "--synthetic-size", "8",
            "--epochs", "1", "--max-steps", "1", "--log-every", "100"]
    with pytest.raises(SystemExit):
        main(base + ["--img-size", "32", "--output", str(tmp_path / "bad")])
    assert "multiple of vit_small_patch14_dinov2's patch size 14" in capsys.readouterr().err
    assert main(base + ["--img-size", "28", "--output", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "last.pth").exists()


@pytest.mark.minutes
def test_sigterm_checkpoints_the_current_step_and_resume_is_bit_exact(tmp_path):
    """A scheduler's preemption: SIGTERM mid-epoch writes last.pth at the end of the current step and
    exits with 143; resuming with the same command equals the uninterrupted run bit for bit."""
    import signal

    run = SMALL + ["--epochs", "1", "--synthetic-size", "400", "--log-every", "1", "--max-steps", "40"]
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "locat_vit.train", *run, "--output", str(b)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    for line in proc.stdout:  # the second progress line: training is under way
        if re.search(r"step\s+2/", line):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 143, out
    assert "SIGTERM: saved" in out and "Traceback" not in out, out
    stopped = torch.load(b / "last.pth", weights_only=True)["global_step"]
    assert 2 <= stopped < 40, stopped
    assert main(run + ["--output", str(b), "--resume", str(b / "last.pth")]) == 0
    assert main(run + ["--output", str(a)]) == 0
    wa, wb = _weights(a / "last.pth"), _weights(b / "last.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(b.glob("*.tmp"))


def test_save_every_writes_last_pth_between_epochs(tmp_path, monkeypatch):
    import locat_vit.train as train

    run = SMALL + ["--epochs", "1", "--synthetic-size", "64", "--save-every", "3", "--max-steps", "4"]
    saves, real = [], train._atomic_save
    monkeypatch.setattr(train, "_atomic_save", lambda obj, path: (saves.append((path.name, obj["global_step"])),
                                                                  real(obj, path)))
    assert main(run + ["--output", str(tmp_path)]) == 0
    assert ("last.pth", 3) in saves and saves[-2:] == [("last.pth", 4), ("best.pth", 4)], saves


def test_an_output_that_cannot_be_written_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(SMALL + ["--output", str(tmp_path / "file" / "run")])
    err = capsys.readouterr().err
    assert "--output" in err and "cannot be written" in err and "Traceback" not in err


def test_a_second_live_run_into_one_output_is_refused(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(SystemExit):
            main(SMALL + ["--epochs", "1", "--max-steps", "1", "--output", str(tmp_path)])
        err = capsys.readouterr().err
        assert f"in use by a live run (pid {sleeper.pid}" in err and "Traceback" not in err
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its stale lock is taken over, and removed when the run ends
    assert main(SMALL + ["--epochs", "1", "--max-steps", "1", "--output", str(tmp_path)]) == 0
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("layout, words", [
    ({"train": ["a", "b"], "val": ["a"]}, "only in train/: b"),
    ({"train": ["a", "b"], "val": ["a", "b"], "empty": "train/b"}, "class folders with no images: b"),
])
def test_image_folder_classes_are_checked_before_training(tmp_path, capsys, layout, words):
    from PIL import Image

    for split in ("train", "val"):
        for c in layout[split]:
            (tmp_path / split / c).mkdir(parents=True)
            if f"{split}/{c}" != layout.get("empty"):
                Image.new("RGB", (8, 8)).save(tmp_path / split / c / "x.png")
    with pytest.raises(SystemExit):
        main(SMALL + ["--data", str(tmp_path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def _folder_with_unreadable(root, unreadable):
    """train/ and val/ with classes a and b of four 40 px images each; ``unreadable`` train images of
    class a are garbage bytes under an image name."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                path = root / split / c / f"{i}.png"
                if split == "train" and c == "a" and i < unreadable:
                    path.write_bytes(b"not an image")
                else:  # the class colour under noise, so that crops and flips change the pixels
                    pixels = (torch.tensor(colour) + torch.randint(-30, 30, (40, 40, 3), generator=g)).clamp(0, 255)
                    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)


def test_an_unreadable_image_is_named_and_the_run_goes_on(tmp_path, capsys):
    _folder_with_unreadable(tmp_path / "data", 1)
    args = ["--data", str(tmp_path / "data"), "--img-size", "32", "--batch-size", "2", "--epochs", "1",
            "--warmup-epochs", "0", "--max-unreadable", "0.2", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"unreadable image skipped (the next one used instead): {tmp_path / 'data' / 'train' / 'a' / '0.png'}" in err


def test_too_many_unreadable_images_stop_the_run_in_one_line(tmp_path, capsys):
    _folder_with_unreadable(tmp_path / "data", 3)
    args = ["--data", str(tmp_path / "data"), "--img-size", "32", "--batch-size", "2", "--epochs", "1",
            "--warmup-epochs", "0", "--max-unreadable", "0.2", "--output", str(tmp_path / "run")]
    assert main(args) == 1  # 2 of 8 unreadable is past 0.2 (the third is not reached before the stop)
    err = capsys.readouterr().err
    assert "locat-train: error: 2 of 8 images under" in err and "--max-unreadable 0.2" in err, err
    assert "Traceback" not in err


def test_too_little_free_space_fails_before_training(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    import locat_vit.train as train

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train.shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(SystemExit):
        main(SMALL + ["--epochs", "1", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert f"--output {tmp_path / 'run'}: 1 MiB free, the checkpoints need about" in err, err
    assert not (tmp_path / "run" / "last.pth").exists() and shutil.disk_usage is not None


def test_temp_files_of_a_killed_run_are_removed_at_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth.99999.tmp").write_bytes(b"half a checkpoint")
    assert main(SMALL + ["--epochs", "1", "--max-steps", "1", "--output", str(out)]) == 0
    assert not list(out.glob("*.tmp")) and (out / "last.pth").is_file()


def test_ddp_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """A scheduler that signals only one process: the flag is shared every step (gloo, host only),
    so both ranks stop after the same step, rank 0 saves, and nothing hangs."""
    import signal

    run = SMALL + ["--epochs", "1", "--synthetic-size", "400", "--batch-size", "4", "--log-every", "1",
                   "--max-steps", "50"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "locat_vit.train", *run, "--output", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # rank 0's second progress line: both ranks are training
        if re.search(r"step\s+2/", line):
            break

    def rank1():
        for stat in Path("/proc").glob("[0-9]*/environ"):
            try:
                environ = stat.read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MASTER_PORT={cmd[8]}".encode() in environ and b"RANK=1" in environ:
                return int(stat.parent.name)

    os.kill(rank1(), signal.SIGTERM)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    assert "SIGTERM: saved" in out, out  # rank 0 was not signalled, yet it saved and stopped
    stopped = torch.load(tmp_path / "last.pth", weights_only=True)["global_step"]
    assert 2 <= stopped < 50, stopped


@pytest.mark.minutes
def test_resume_skips_done_batches_unread_and_keeps_random_augmentation_exact(tmp_path, monkeypatch):
    """An image folder with timm's random training augmentation (crops, flips), no loader workers:
    the resumed epoch starts at its next batch without reading the done ones, and the run equals the
    uninterrupted one bit for bit (the torch and Python generator states are in the checkpoint)."""
    import locat_vit.train as train

    _folder_with_unreadable(tmp_path / "data", 0)  # 8 train images: 4 steps an epoch at batch 2
    args = ["--data", str(tmp_path / "data"), "--img-size", "32", "--batch-size", "2", "--epochs", "2",
            "--warmup-epochs", "0", "--lr", "1e-3", "--max-steps", "7"]
    reads, real = [], train._NamedFailures.__getitem__

    def counted(self, index):
        if "train" in str(self.reader.filename(index, absolute=True)):
            reads.append(index)
        return real(self, index)

    monkeypatch.setattr(train._NamedFailures, "__getitem__", counted)
    assert main(args + ["--output", str(tmp_path / "a")]) == 0
    b = args[:-1] + ["2", "--output", str(tmp_path / "b")]
    assert main(b) == 0  # stops after 2 of the first epoch's 4 steps
    reads.clear()
    assert main(args + ["--output", str(tmp_path / "b"), "--resume", str(tmp_path / "b" / "last.pth")]) == 0
    assert len(reads) == 2 * 2 + 3 * 2  # steps 3-4 of epoch 1 and 1-3 of epoch 2, two images each
    wa, wb = _weights(tmp_path / "a" / "last.pth"), _weights(tmp_path / "b" / "last.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
