"""LocAtViT on timm: registry, published keys, checkpoints, the published function, backends, locatify."""
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

import locat_vit
from locat_kernels import gaussian_attention_reference, gaussian_bias
from locat_vit import GaussianAugmentedAttention, load_checkpoint, locatify

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SIZES = {"locatvit_tiny": (192, 3), "locatvit_small": (384, 6), "locatvit_base": (768, 12)}


def published_forward(sd, x, *, heads, P=1, init_grid, eps_grid=None, pool="token"):
    """The published LocAtViT function from a state dict, written out directly (docs/method.md sections 1-2).

    ``pool="avg"``: timm's default structure for average pooling, which the published model keeps:
    no final norm before PRR, the mean of the patch tokens, then ``fc_norm``, then the head."""
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], 1e-6)  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    B, C, gh, gw = t.shape
    t = t.flatten(2).transpose(1, 2)
    pos = sd.get("pos_embed", 0.0)  # none: the published no_pos_emb=True model
    if (gh, gw) != init_grid and "pos_embed" in sd:  # timm's resampling of the position embedding (dynamic size)
        from timm.layers import resample_abs_pos_embed
        pos = resample_abs_pos_embed(pos, (gh, gw), init_grid, num_prefix_tokens=P)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + pos
    m = max(init_grid)
    coef = m * m
    shift = math.log(coef - 1)
    D = C // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        y = ln(t, b + "norm1")
        q, k, v = lin(y, b + "attn.qkv").reshape(B, -1, 3, heads, D).permute(2, 0, 3, 1, 4)
        qp = q[:, :, P:]
        var = coef * torch.sigmoid(lin(qp, b + "attn.gaug.log_var") - shift) * min(gh, gw) / min(init_grid)
        alpha = F.softplus(lin(qp, b + "attn.gaug.log_alpha"))
        bias = gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=P, init_grid_size=init_grid)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, -1) @ v
        t = t + lin(a.transpose(1, 2).reshape(B, -1, C), b + "attn.proj")
        t = t + lin(F.gelu(lin(ln(t, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
        i += 1
    if pool == "token":
        t = ln(t, "norm")
    h = t.reshape(B, -1, heads, D).transpose(1, 2)  # PRR
    t = (torch.softmax(h @ h.transpose(-1, -2) / math.sqrt(D), -1) @ h).transpose(1, 2).reshape(B, -1, C)
    if pool == "avg":
        return lin(ln(t[:, P:].mean(1), "fc_norm"), "head"), t
    return lin(t[:, 0], "head"), t


def _random_published_state(model):
    """A published-style state dict: every weight random (not the init), same keys and shapes."""
    return {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(SIZES))
def test_each_size_forward_backward(name):
    """Each registered size (default backend) computes the published function and its gradients,
    float64, random published-layout weights."""
    model = timm.create_model(name, img_size=32, num_classes=5).double()
    dim, heads = SIZES[name]
    assert model.embed_dim == dim and model.blocks[0].attn.num_heads == heads
    sd = _random_published_state(model)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = model(x)
    ref = {k: v.clone().requires_grad_() for k, v in sd.items()}
    want, _ = published_forward(ref, x, heads=heads, init_grid=(2, 2))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    want.square().sum().backward()
    params = dict(model.named_parameters())
    assert all(params[k].grad is not None for k in params)
    for k in ("blocks.0.attn.gaug.log_var.weight", "blocks.0.attn.gaug.log_alpha.bias", "blocks.0.attn.qkv.weight",
              "pos_embed", "cls_token", "head.weight"):
        torch.testing.assert_close(params[k].grad, ref[k].grad, rtol=1e-9, atol=1e-10)


def test_published_keys_and_shapes():
    model = timm.create_model("locatvit_tiny")
    vit = timm.create_model("vit_tiny_patch16_224")
    ours, theirs = model.state_dict(), vit.state_dict()
    extra = {k: tuple(v.shape) for k, v in ours.items() if k not in theirs}
    want = {}
    for i in range(12):
        want |= {f"blocks.{i}.attn.gaug.log_var.weight": (2, 64), f"blocks.{i}.attn.gaug.log_var.bias": (2,),
                 f"blocks.{i}.attn.gaug.log_alpha.weight": (1, 64), f"blocks.{i}.attn.gaug.log_alpha.bias": (1,)}
    assert extra == want
    assert all(k in ours and ours[k].shape == v.shape for k, v in theirs.items())


def test_init_gives_unit_variance_and_softplus0_amplitude():
    model = timm.create_model("locatvit_tiny", img_size=64)
    gaug = model.blocks[3].attn.gaug
    with torch.no_grad():
        assert float(gaug.log_var.bias.abs().max()) == 0.0 and 0.01 < float(gaug.log_var.weight.std()) < 0.03
        var, alpha = gaug(torch.zeros(1, 3, 16, 64), (4, 4))
    torch.testing.assert_close(var, torch.ones_like(var))
    torch.testing.assert_close(alpha, torch.full_like(alpha, math.log(2)))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_published_checkpoint_loads_strictly_and_computes_the_published_function(tmp_path, fmt):
    model = timm.create_model("locatvit_tiny", img_size=64, num_classes=7, attn_backend="eager").double().eval()
    sd = _random_published_state(model)
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "pth":
        torch.save({"model": sd}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    load_checkpoint(model, path)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    want, feats = published_forward(sd, x, heads=3, init_grid=(4, 4))
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    dense = model.forward_dense(x)
    torch.testing.assert_close(dense, feats[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4), rtol=1e-10, atol=1e-10)
    # timm's own pretrained path with a local file (it loads into the float32 model: float32 rounding)
    again = timm.create_model("locatvit_tiny", img_size=64, num_classes=7, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7), attn_backend="eager").double().eval()
    torch.testing.assert_close(again(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("img", [64, 96])
def test_without_position_embedding_as_published(img):
    """The published no_pos_emb=True models are timm's pos_embed="none": no pos_embed key, the class
    token still prepended; the published function in float64 at the build size and, with a dynamic
    size, at another one (the Gaussian then carries all the position information)."""
    model = timm.create_model("locatvit_tiny", img_size=64, num_classes=7, pos_embed="none", dynamic_img_size=True,
                              attn_backend="eager").double().eval()
    assert "pos_embed" not in model.state_dict()
    sd = _random_published_state(model)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    want, _ = published_forward(sd, x, heads=3, init_grid=(4, 4))
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


def test_average_pooling_follows_the_published_structure():
    """global_pool="avg" without an explicit fc_norm: as published (timm's default), fc_norm after
    pooling and no final norm before PRR; such a checkpoint loads strictly and computes its function."""
    model = timm.create_model("locatvit_tiny", img_size=64, num_classes=7, global_pool="avg",
                              attn_backend="eager").double().eval()
    keys = model.state_dict().keys()
    assert "fc_norm.weight" in keys and "norm.weight" not in keys
    sd = _random_published_state(model)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    want, _ = published_forward(sd, x, heads=3, init_grid=(4, 4), pool="avg")
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


def test_checkpoint_that_does_not_fit_names_keys_and_changes_nothing(tmp_path):
    model = timm.create_model("locatvit_tiny", img_size=32)
    sd = _random_published_state(model)
    del sd["blocks.0.attn.gaug.log_var.bias"]
    sd["blocks.1.attn.extra"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(3, 192)
    torch.save(sd, tmp_path / "bad.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_checkpoint(model, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "blocks.0.attn.gaug.log_var.bias" in msg and "blocks.1.attn.extra" in msg and "head.weight" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(model, tmp_path / "missing.pth")


def test_a_checkpoint_of_another_size_is_summarized_in_one_line(tmp_path):
    small = timm.create_model("locatvit_small", img_size=32)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError) as e:
        load_checkpoint(timm.create_model("locatvit_tiny", img_size=32), tmp_path / "small.pth")
    msg = str(e.value)
    assert "\n" not in msg and "mis-shaped (" in msg and msg.count("checkpoint (") <= 3 and len(msg) < 600, msg


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None], ids=["empty", "garbage", "truncated"])
def test_an_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, content):
    model = timm.create_model("locatvit_tiny", img_size=32)
    path = tmp_path / "ckpt.pth"
    if content is None:  # a real checkpoint cut in half
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_checkpoint(model, path)
    msg = str(e.value)
    assert str(path) in msg and "not a readable checkpoint" in msg and "\n" not in msg
    assert "weights_only=False" not in msg  # never advise unpickling untrusted data


def test_dynamic_size_uses_current_grid_and_build_constants():
    model = timm.create_model("locatvit_tiny", img_size=64, dynamic_img_size=True, attn_backend="eager",
                              num_classes=4).double().eval()
    sd = _random_published_state(model)
    model.load_state_dict(sd)
    x = torch.randn(1, 3, 96, 80, dtype=torch.float64)  # grid (6, 5), built for (4, 4)
    want, _ = published_forward(sd, x, heads=3, init_grid=(4, 4))
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    assert model.grid_size == (6, 5) and model.forward_dense(x).shape == (1, 192, 6, 5)


def test_register_tokens_and_no_class_token():
    model = timm.create_model("locatvit_tiny", img_size=32, reg_tokens=4, num_classes=3)
    assert model.blocks[0].attn.num_prefix_tokens == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model = timm.create_model("locatvit_tiny", img_size=32, class_token=False, global_pool="avg", num_classes=3)
    assert model.blocks[0].attn.num_prefix_tokens == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _attention_at(grid, mode="published"):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16 * grid, num_classes=0)
    attn = GaussianAugmentedAttention(vit.blocks[0].attn, (grid, grid), 1, "eager", mode).double()
    for p in attn.gaug.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return attn


def test_published_rate2_in_training_at_large_grids_is_pooled_and_upsampled():
    attn = _attention_at(32).train()
    assert attn.rate() == 2
    x = torch.randn(1, 1 + 32 * 32, 192, dtype=torch.float64)
    B, N, H, D = 1, x.shape[1], 3, 64
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    pooled = F.avg_pool2d(q[:, :, 1:].reshape(H, 32, 32, D).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    var, alpha = attn.gaug(pooled.reshape(B, H, 16 * 16, D), (32, 32))  # the pooled queries, at rate 1
    up = lambda t: (t.reshape(B, H, 16, 16, -1).repeat_interleave(2, 2).repeat_interleave(2, 3)  # noqa: E731
                    .reshape(B, H, 32 * 32, -1))
    ref = gaussian_attention_reference(q, k, v, up(var), up(alpha), (32, 32), num_prefix_tokens=1, rate=2)
    want = attn.proj(ref.transpose(1, 2).reshape(B, N, -1))
    torch.testing.assert_close(attn(x), want, rtol=1e-10, atol=1e-10)


def test_eval_and_exact_mode_use_the_exact_formula_at_large_grids():
    attn = _attention_at(32)
    assert attn.eval().rate() == 1
    assert _attention_at(32, "exact").train().rate() == 1
    assert _attention_at(16).train().rate() == 1  # small build grids are always exact
    x = torch.randn(1, 1 + 32 * 32, 192, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(1, -1, 3, 3, 64).permute(2, 0, 3, 1, 4)
    var, alpha = attn.gaug(q[:, :, 1:], (32, 32))
    ref = gaussian_attention_reference(q, k, v, var, alpha, (32, 32), num_prefix_tokens=1)
    torch.testing.assert_close(attn(x), attn.proj(ref.transpose(1, 2).reshape(1, -1, 192)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,qk_norm", [("sdpa", False), ("triton", False), ("triton", True)])
def test_backends_agree_with_eager(backend, qk_norm, device, monkeypatch):
    """Every layer on the triton backend without q/k norms takes qkv packed (the kernels write its
    gradient in the qkv layer's layout); with them, the normed views."""
    import locat_kernels.attention as attention

    packed, apply = [], attention._LocatAttentionPacked.apply
    monkeypatch.setattr(attention._LocatAttentionPacked, "apply", lambda *args: packed.append(1) or apply(*args))
    model = timm.create_model("locatvit_tiny", img_size=48, num_classes=3, attn_backend="eager",
                              qk_norm=qk_norm).to(device)
    x = torch.randn(2, 3, 48, 48, device=device)
    want = model(x)
    grads_want = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    model.set_attn_backend(backend)
    got = model(x)
    grads = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for g, w in zip(grads, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)
    assert len(packed) == (len(model.blocks) if backend == "triton" and not qk_norm else 0)


def test_locatify_keeps_weights_and_adds_only_published_keys():
    vit = timm.create_model("vit_small_patch16_224", img_size=64, num_classes=10)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    model = locatify(vit, attn_backend="eager")
    assert isinstance(model, locat_vit.LocAtViT) and model is vit
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    added = sorted(set(after) - set(before))
    assert added == sorted(f"blocks.{i}.attn.gaug.{n}.{p}" for i in range(12)
                           for n in ("log_var", "log_alpha") for p in ("weight", "bias"))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="already"):
        locatify(model)
    with pytest.raises(ValueError, match="already"):
        locatify(timm.create_model("locatjumbo_tiny", img_size=32, num_classes=5))
    with pytest.raises(TypeError, match="takes a timm VisionTransformer, SwinTransformer or Eva"):
        locatify(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="does not take a Jumbo"):
        locatify(timm.create_model("jumbo_tiny", img_size=32, num_classes=5))


def test_prr_matches_timms_attention_pool_prr():
    prr_cls = getattr(timm.layers, "AttentionPoolPrr", None)
    if prr_cls is None:
        pytest.skip("this timm has no AttentionPoolPrr")
    x = torch.randn(2, 17, 192)
    torch.testing.assert_close(locat_vit.patch_refinement(x, 3)[:, 0], prr_cls(192, num_heads=3)(x))


def test_forward_intermediates_gives_the_last_blocks_and_the_final_features():
    model = timm.create_model("locatvit_tiny", img_size=32, attn_backend="eager").double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    final, inter = model.forward_intermediates(x, indices=2)
    t, want = model.norm_pre(model._pos_embed(model.patch_embed(x))), []
    for blk in model.blocks:
        t = blk(t)
        want.append(t[:, 1:].transpose(1, 2).reshape(1, 192, 2, 2))
    assert len(inter) == 2
    for g, w in zip(inter, want[-2:]):  # the last two blocks' outputs as maps, before the final norm
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, model.norm(t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, model.forward_features(x), rtol=1e-12, atol=1e-12)


def test_features_only_gives_the_block_outputs_as_maps():
    """timm's feature getter, as for its ViT: the outputs of the chosen blocks (before the final
    norm and PRR) as (B, C, gh, gw) maps."""
    features = timm.create_model("locatvit_tiny", img_size=48, features_only=True, out_indices=(1, 3),
                                 attn_backend="eager").double()
    model = timm.create_model("locatvit_tiny", img_size=48, attn_backend="eager").double()
    missing, _ = features.model.load_state_dict(model.state_dict(), strict=False)  # blocks after 3: pruned
    assert not missing
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    t, want = model.norm_pre(model._pos_embed(model.patch_embed(x))), []
    for i, blk in enumerate(model.blocks):
        t = blk(t)
        if i in (1, 3):
            want.append(t[:, 1:].transpose(1, 2).reshape(2, 192, 3, 3))
    got = features(x)
    assert features.feature_info.reduction() == [16, 16] and len(got) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_set_input_size_rebuilds_every_layer_for_the_new_grid():
    """As the published code fine-tunes at a new resolution (the model built at that size): the
    position embedding resampled, the Gaussians' build grid and current grid the new one."""
    model = timm.create_model("locatvit_tiny", img_size=64, attn_backend="eager", num_classes=4).double().eval()
    model.load_state_dict(_random_published_state(model))
    model.set_input_size(img_size=96)
    assert model.grid_size == (6, 6) and all(b.attn.init_grid_size == (6, 6) for b in model.blocks)
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    want, _ = published_forward(model.state_dict(), x, heads=3, init_grid=(6, 6))
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    model.set_input_size(img_size=512)  # a build grid of 32: the published rate-2 mode in training
    assert model.train().blocks[0].attn.rate() == 2
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        model.set_input_size(img_size=100)


def test_registered_under_a_module_that_names_it_and_runs_on_meta():
    """timm lists models by module; its cfg tests and FLOP counters run the forward on the meta device."""
    assert set(timm.list_models(module="locatvit")) >= set(SIZES)
    with torch.device("meta"):
        model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3)
        assert model(torch.empty(2, 3, 32, 32)).shape == (2, 3)


def test_fx_feature_extraction_and_export_give_the_eager_outputs(device):
    """timm's FX tracer (the attention layer is a leaf), torch.fx (the op a recorded call) and
    torch.export (the ops exported as ``locat::`` ops, not their kernels) reproduce the eager model."""
    from timm.models import create_feature_extractor

    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, attn_backend="eager").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    want = model(x)
    assert torch.equal(create_feature_extractor(model, return_nodes={"head": "out"})(x)["out"], want)
    assert torch.equal(torch.fx.symbolic_trace(model)(x), want)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), want, rtol=1e-12, atol=1e-12)
    model.set_attn_backend("sdpa")
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x), rtol=1e-12, atol=1e-12)
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, attn_backend="triton").to(device).eval()
    x = x.float().to(device)
    exported = torch.export.export(model, (x,))
    assert any(str(n.target).startswith("locat.locat_attention") for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)


def test_onnx_export_with_the_eager_backend(tmp_path):
    """ONNX (torch.onnx.export, dynamo) with attn_backend="eager", run by onnxruntime. Needs the
    ``onnx`` extra (pip install -e ".[onnx]"); the triton backend cannot be exported to ONNX, and the
    sdpa backend fails in the exporter's decomposition step (README)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, attn_backend="eager").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(model, (x,), tmp_path / "locatvit.onnx", dynamo=True)
    session = ort.InferenceSession(str(tmp_path / "locatvit.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-4, atol=1e-5)


def test_trains_one_step_at_default_size():
    """At 224 px (the 14 x 14 build grid) the training loss and the gradient of a Gaussian layer are
    the published function's, and one AdamW step moves that layer by lr per element."""
    model = timm.create_model("locatvit_tiny", num_classes=10)
    sd = {k: v.clone().requires_grad_() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 7])
    before = model.blocks[0].attn.gaug.log_var.weight.detach().clone()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    want, _ = published_forward(sd, x, heads=3, init_grid=(14, 14))
    want_loss = F.cross_entropy(want, y)
    want_loss.backward()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    grad = model.blocks[0].attn.gaug.log_var.weight.grad
    torch.testing.assert_close(grad, sd["blocks.0.attn.gaug.log_var.weight"].grad, rtol=2e-3, atol=1e-7)
    opt.step()
    step = (model.blocks[0].attn.gaug.log_var.weight - before).abs()
    big = grad.abs() > 2e-6  # Adam's first step is lr * g / (|g| + eps), eps 1e-8: lr where |g| >> eps
    assert big.sum() > 10
    torch.testing.assert_close(step[big], torch.full_like(step[big], 1e-3), rtol=1e-2, atol=0)


def test_compile_fullgraph_model(device):
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, attn_backend="triton").to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    want = model(x)
    backend = "inductor" if device == "cuda" else "eager"  # dynamo alone on CPU: fast, still fullgraph
    got = torch.compile(model, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compile_dynamic_img_size_model_at_two_sizes(device):
    """A compiled dynamic_img_size model keeps eager's output at new image sizes (the grids of the ops change)."""
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, dynamic_img_size=True,
                              attn_backend="triton").to(device)
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
    for size in (32, 48):
        x = torch.randn(2, 3, size, size, device=device)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_triton_matches_sdpa_in_bf16_autocast():
    model = timm.create_model("locatvit_small", num_classes=10, attn_backend="sdpa").cuda()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        want = model(x).float()
        model.set_attn_backend("triton")
        got = model(x).float()
    assert (got - want).norm() / want.norm() < 3e-2


def test_published_weights_are_the_hub_pretrained_cfgs():
    cfgs = {name: timm.models.get_pretrained_cfg(name) for name in SIZES}
    assert cfgs["locatvit_tiny"].hf_hub_id == "sinahmr/locatvit_tiny"
    assert cfgs["locatvit_base"].hf_hub_id == "sinahmr/locatvit_base"
    assert not cfgs["locatvit_small"].hf_hub_id  # nothing published for small


@pytest.mark.parametrize("route", ["locatvit_tiny", "hf-hub:sinahmr/locatvit_tiny"])
def test_pretrained_true_loads_from_the_hub_cache_offline(tmp_path, route):
    """timm's own loader, offline, from a local Hugging Face cache in the hub's layout holding a
    random published-layout model.safetensors: create_model(pretrained=True) gets exactly those
    weights, by the registered name (its pretrained cfg's hf_hub_id) and by the ``hf-hub:`` route,
    which reads the repository's config.json (timm's layout, architecture ``locatvit_tiny``, as the
    published repository is validated with ``--model hf-hub:sinahmr/locatvit_tiny``) and must build
    this package's model."""
    from safetensors.torch import save_file

    model = timm.create_model("locatvit_tiny", img_size=32)
    sd = {k: v.contiguous() for k, v in _random_published_state(model).items()}
    repo = tmp_path / "hub" / "models--sinahmr--locatvit_tiny"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    save_file(sd, str(snapshot / "model.safetensors"))
    cfg = timm.models.get_pretrained_cfg("locatvit_tiny").to_dict()
    (snapshot / "config.json").write_text(json.dumps(dict(
        architecture="locatvit_tiny", num_classes=1000, num_features=192, global_pool="token",
        pretrained_cfg={k: v for k, v in cfg.items() if k not in ("hf_hub_id", "file", "url")})))
    torch.save(sd, tmp_path / "want.pth")
    script = (
        "import torch, timm, locat_vit\n"
        f"m = timm.create_model({route!r}, img_size=32, pretrained=True)\n"
        "assert isinstance(m, locat_vit.LocAtViT), type(m)\n"
        f"want = torch.load({str(tmp_path / 'want.pth')!r})\n"
        "got = m.state_dict()\n"
        "assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)\n"
        "print('loaded', len(want))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


def test_a_missing_pretrained_file_is_named():
    with pytest.raises(FileNotFoundError, match="/nonexistent/w.pth does not exist"):
        timm.create_model("locatvit_tiny", img_size=32, pretrained=True,
                          pretrained_cfg_overlay=dict(file="/nonexistent/w.pth"))
