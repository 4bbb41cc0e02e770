"""The segmentation probe: the mIoU metric on a hand-made example, the ADE20K loader, the CLI."""
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from locat_vit.data import SyntheticScenes
import timm

from locat_vit.probe import ADE20K, IGNORE, confusion, features, main, make_head, make_optimizer, mean_iou, probe


def test_miou_hand_made():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    conf = confusion(pred, target, 3)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> 1/3
    # class 1: TP 3, FP 1, FN 0 -> 3/4; class 2: TP 1, FP 0 (the ignored pixel), FN 1 -> 1/2
    assert conf.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert mean_iou(conf) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_synthetic_scenes_are_deterministic_and_labelled():
    ds = SyntheticScenes(4, 32, num_classes=5, seed=3)
    (x1, y1), (x2, y2) = ds[2], ds[2]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 32, 32) and y1.shape == (32, 32) and y1.min() >= 0 and y1.max() < 5
    assert len(y1.unique()) > 1


def test_ade20k_layout(tmp_path):
    from PIL import Image

    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "images" / split / "a.jpg")
        label = Image.new("L", (40, 30), 0)
        label.paste(7, (0, 0, 20, 30))
        label.save(tmp_path / "annotations" / split / "a.png")
    x, y = ADE20K(tmp_path, "training", 32)[0]
    assert x.shape == (3, 32, 32)
    assert set(y.unique().tolist()) == {6, IGNORE}  # 7 shifted to 6, 0 ("other") ignored
    (tmp_path / "annotations" / "validation" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="no annotation"):
        ADE20K(tmp_path, "validation", 32)


@pytest.mark.parametrize("name", ["locatvit_tiny", "vit_tiny_patch16_224"])
def test_published_features_are_the_last_block_before_norm_and_prr(name):
    """The paper's probe reads the last block's output (patch tokens as a map), not the normed or
    PRR-refined features; the same call for LocAtViT and ViT, at a size that needs padding."""
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=40, dynamic_img_size=True, dynamic_img_pad=True).eval()
    seen = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        got = features(model, x, "published")
    tokens = seen["out"][:, model.num_prefix_tokens:]  # 40 px padded to 48: a 3 x 3 grid
    assert torch.equal(got, tokens.transpose(1, 2).reshape(2, model.embed_dim, 3, 3))
    with torch.no_grad():
        normed = model.norm(seen["out"])[:, model.num_prefix_tokens:].transpose(1, 2).reshape(2, -1, 3, 3)
    assert not torch.allclose(got, normed)


def test_published_head_and_one_cycle_schedule():
    head = make_head("published", 8, 3)
    assert [type(m).__name__ for m in head] == ["Conv2d", "GroupNorm", "GELU", "Conv2d"]
    assert head[0].bias is None and head[0].out_channels == 512 and head[1].num_groups == 1
    opt, schedule = make_optimizer("published", head, 1e-3, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert lrs[0] == pytest.approx(1e-7) and lrs[12] == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 24  # up over the first 25% of steps
    assert lrs[-1] == pytest.approx(1e-11) and lrs[24 + 30] == pytest.approx(1e-3 + (1e-11 - 1e-3) * 30 / 75)
    opt, schedule = make_optimizer("linear", make_head("linear", 8, 3), 1e-2, 10)
    assert isinstance(make_head("linear", 8, 3), torch.nn.Conv2d) and opt.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize("protocol", ["published", "linear"])
def test_probe_learns_a_single_class_exactly(protocol):
    """Every pixel of class 1 (and some ignored): the head must learn it and score mIoU 1 exactly."""
    x = torch.randn(8, 3, 32, 32)
    y = torch.ones(8, 32, 32, dtype=torch.long)
    y[:, :4] = IGNORE
    model = timm.create_model("locatvit_tiny", img_size=32)
    miou = probe(model, TensorDataset(x, y), TensorDataset(x, y), 3, steps=30, batch_size=4,
                 lr=1e-2, device="cpu", protocol=protocol, log=lambda *_: None)
    assert miou == 1.0


def test_cli_compares_locatvit_and_vit_on_default_data(tmp_path, capsys):
    out = tmp_path / "miou.json"
    assert main(["--img-size", "40", "--steps", "4", "--batch-size", "8", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["miou"]) == {"locatvit_tiny", "vit_tiny_patch16_224"}
    assert result["args"]["steps"] == 4 and result["args"]["lr"] == 1e-3 and result["args"]["protocol"] == "published"
    assert "randomly initialised" in capsys.readouterr().out
    # the same seed, the same data: the same scores
    assert main(["--img-size", "40", "--steps", "4", "--batch-size", "8", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == result["miou"]


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "nowhere"), "--img-size", "32"])
    assert "no images in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "locatvit_huge"])
    assert "unknown model" in capsys.readouterr().err
