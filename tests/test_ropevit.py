"""LocAt on RoPE-ViT (timm's Eva, mixed RoPE): registry, published keys, the published function in
float64 (var and alpha from the queries before the rotation), dynamic sizes."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat

import locat_vit
from helpers import check_fused_model, check_locatify
from locat_kernels import gaussian_bias


def published_rope_forward(sd, x, rope, *, heads, init_grid):
    """The published LocAt RoPE-ViT from a state dict, written out (docs/method.md sections 1-2, and
    the RoPE-ViT block: pre-norm, layer scale gamma, no absolute position embedding). ``rope``: the
    per-block rotary embeddings of the current grid (timm's mixed RoPE, depth first)."""
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], 1e-6)  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    B, C, gh, gw = t.shape
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t.flatten(2).transpose(1, 2)], 1)
    coef = max(init_grid) ** 2
    D = C // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        q, k, v = lin(ln(t, b + "norm1"), b + "attn.qkv").reshape(B, -1, 3, heads, D).permute(2, 0, 3, 1, 4)
        qp = q[:, :, 1:]  # the Gaussian from the queries before the rotation
        var = coef * torch.sigmoid(lin(qp, b + "attn.gaug.log_var") - math.log(coef - 1)) * min(gh, gw) / min(init_grid)
        alpha = F.softplus(lin(qp, b + "attn.gaug.log_alpha"))
        bias = gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=1, init_grid_size=init_grid)
        q = torch.cat([q[:, :, :1], apply_rot_embed_cat(q[:, :, 1:], rope[i])], 2)
        k = torch.cat([k[:, :, :1], apply_rot_embed_cat(k[:, :, 1:], rope[i])], 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, -1) @ v
        t = t + sd[b + "gamma_1"] * lin(a.transpose(1, 2).reshape(B, -1, C), b + "attn.proj")
        t = t + sd[b + "gamma_2"] * lin(F.gelu(lin(ln(t, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
        i += 1
    t = ln(t, "norm")
    h = t.reshape(B, -1, heads, D).transpose(1, 2)  # PRR
    t = (torch.softmax(h @ h.transpose(-1, -2) / math.sqrt(D), -1) @ h).transpose(1, 2).reshape(B, -1, C)
    return lin(t[:, 0], "head")


def _random_state(model):
    return {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,heads", [("locatvit_tiny_rope_mixed", 3), ("locatvit_base_rope_mixed", 12)])
def test_registered_with_the_published_keys(name, heads):
    model = timm.create_model(name, img_size=32)
    assert isinstance(model, locat_vit.LocAtRoPEViT) and model.blocks[0].attn.num_heads == heads
    eva = timm.create_model("vit_small_patch16_rope_mixed_224", img_size=32, embed_dim=model.embed_dim,
                            num_heads=heads)  # timm's RoPE-ViT of that width: the published backbone
    gaug = {f"blocks.{i}.attn.gaug.{layer}.{p}" for i in range(12) for layer in ("log_var", "log_alpha")
            for p in ("weight", "bias")}
    assert set(model.state_dict()) == set(eva.state_dict()) | gaug
    model.load_state_dict(_random_state(model), strict=True)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("size,dynamic", [(32, False), (48, True)])
def test_computes_the_published_function_and_gradients_in_float64(backend, size, dynamic):
    """Built at 32 px (a 2 x 2 grid); with a dynamic size also run at 48 px (3 x 3: the current grid
    gives positions and the rotary embedding, the build grid the constants, var rescaled)."""
    torch.manual_seed(0)
    model = timm.create_model("locatvit_tiny_rope_mixed", img_size=32, num_classes=5, attn_backend=backend,
                              dynamic_img_size=dynamic).double()
    sd = _random_state(model)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out = model(x)
    ref = {k: v.clone().requires_grad_() for k, v in sd.items()}
    grid = (size // 16, size // 16)
    rope = model.rope.get_embed(shape=list(grid)) if dynamic else model.rope.get_embed()
    want = published_rope_forward(ref, x, rope, heads=3, init_grid=(2, 2))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    want.square().sum().backward()
    params = dict(model.named_parameters())
    for k in ("blocks.0.attn.gaug.log_var.weight", "blocks.3.attn.gaug.log_alpha.weight", "blocks.0.attn.qkv.weight",
              "blocks.11.gamma_1", "cls_token", "head.weight"):
        torch.testing.assert_close(params[k].grad, ref[k].grad, rtol=1e-9, atol=1e-10)


def test_the_gaussian_sees_the_queries_before_the_rotation(monkeypatch):
    """The first block's locat_attention gets the unrotated queries as ``gaussian_queries`` and the
    rotated ones (patches only) as its attention queries."""
    from locat_vit import ropevit

    torch.manual_seed(0)
    model = timm.create_model("locatvit_tiny_rope_mixed", img_size=48, num_classes=5, attn_backend="eager").double()
    model.load_state_dict(_random_state(model))
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    calls = []

    def spy(q, *args, **kwargs):
        calls.append((q, kwargs["gaussian_queries"]))
        return ropevit_attention(q, *args, **kwargs)

    ropevit_attention = ropevit.locat_attention
    monkeypatch.setattr(ropevit, "locat_attention", spy)
    model(x)
    t = model.blocks[0].norm1(torch.cat([model.cls_token, model.patch_embed(x)], 1))  # no absolute position embedding
    q = model.blocks[0].attn.qkv(t).reshape(1, 10, 3, 3, 64).permute(2, 0, 3, 1, 4)[0]
    rotated, unrotated = calls[0]
    torch.testing.assert_close(unrotated, q, rtol=0, atol=0)
    torch.testing.assert_close(rotated[:, :, :1], q[:, :, :1], rtol=0, atol=0)  # the class token is not rotated
    assert (rotated[:, :, 1:] - q[:, :, 1:]).abs().max() > 1e-3


def test_locatify_turns_timms_rope_vit_into_locat_keeping_every_weight():
    eva = timm.create_model("vit_small_patch16_rope_mixed_224", img_size=32, embed_dim=192, num_heads=3,
                            num_classes=5).double()
    built = timm.create_model("locatvit_tiny_rope_mixed", img_size=32, num_classes=5, attn_backend="eager").double()
    model = check_locatify(eva, built, torch.randn(2, 3, 32, 32, dtype=torch.float64), attn_backend="eager")
    assert isinstance(model, locat_vit.LocAtRoPEViT)


def test_the_fused_path_matches_float64(device):
    """attn_backend="triton" (the rotated queries into the fused attention, var and alpha from the
    unrotated ones by their own kernels) in float32 against the eager model in float64: the output
    and every parameter's gradient."""
    torch.manual_seed(0)
    ref = timm.create_model("locatvit_tiny_rope_mixed", img_size=48, num_classes=5, attn_backend="eager").double()
    ref.load_state_dict(_random_state(ref))
    fused = timm.create_model("locatvit_tiny_rope_mixed", img_size=48, num_classes=5, attn_backend="triton")
    fused.load_state_dict(ref.state_dict())
    fused.to(device)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    check_fused_model(fused, ref, x)

