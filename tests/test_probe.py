"""The segmentation probe: the mIoU metric on a hand-made example, the ADE20K loader, the CLI."""
import json

import pytest
import torch

from locat_vit.data import SyntheticScenes
from locat_vit.probe import ADE20K, IGNORE, confusion, main, mean_iou


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


def test_cli_compares_locatvit_and_vit_on_default_data(tmp_path):
    out = tmp_path / "miou.json"
    assert main(["--img-size", "32", "--steps", "4", "--batch-size", "8", "--output", str(out)]) == 0
    scores = json.loads(out.read_text())["miou"]
    assert set(scores) == {"locatvit_tiny", "vit_tiny_patch16_224"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "nowhere"), "--img-size", "32"])
    assert "no images in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "locatvit_huge"])
    assert "unknown model" in capsys.readouterr().err
