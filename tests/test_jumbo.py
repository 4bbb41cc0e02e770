"""LocAt on Jumbo (J wide prefix tokens with their own norm and shared MLP): registry, published keys,
the published function in float64, with and without LocAt, fixed and dynamic sizes."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import locat_vit
from locat_kernels import gaussian_bias

J = 6


def published_jumbo_forward(sd, x, *, heads, init_grid, locat):
    """The published (LocAt) Jumbo from a state dict, written out: per block attention over all tokens,
    then the J prefix tokens flattened through norm3 / the shared jumbo MLP / ls3 and the patches
    through norm2 / mlp / ls2; the flattened prefix normed, the patches normed (LocAt), PRR (LocAt),
    the head on the flattened prefix."""
    ln = lambda t, n, eps=1e-6: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], eps)  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    mlp = lambda t, n: lin(F.gelu(lin(t, n + ".fc1")), n + ".fc2")  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    B, C, gh, gw = t.shape
    pos = sd["pos_embed"]
    if (gh, gw) != init_grid:
        pos = resample_abs_pos_embed(pos, (gh, gw), init_grid, num_prefix_tokens=0)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t.flatten(2).transpose(1, 2) + pos], 1)
    coef, D = max(init_grid) ** 2, C // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        q, k, v = lin(ln(t, b + "norm1"), b + "attn.qkv").reshape(B, -1, 3, heads, D).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(D)
        if locat:
            qp = q[:, :, J:]
            var = coef * torch.sigmoid(lin(qp, b + "attn.gaug.log_var") - math.log(coef - 1)) * min(gh, gw) / min(init_grid)
            alpha = F.softplus(lin(qp, b + "attn.gaug.log_alpha"))
            logits = logits + gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=J, init_grid_size=init_grid)
        a = torch.softmax(logits, -1) @ v
        t = t + sd[b + "ls1.gamma"] * lin(a.transpose(1, 2).reshape(B, -1, C), b + "attn.proj")
        prefix, patches = t[:, :J].reshape(B, J * C), t[:, J:]
        prefix = prefix + sd[b + "ls3.gamma"] * mlp(ln(prefix, b + "norm3", 1e-5), "jumbo_mlp")
        patches = patches + sd[b + "ls2.gamma"] * mlp(ln(patches, b + "norm2"), b + "mlp")
        t = torch.cat([prefix.reshape(B, J, C), patches], 1)
        i += 1
    prefix = ln(t[:, :J].reshape(B, J * C), "norm", 1e-5).reshape(B, J, C)
    patches = ln(t[:, J:], "norm_patches", 1e-5) if locat else t[:, J:]
    t = torch.cat([prefix, patches], 1)
    if locat:
        h = t.reshape(B, -1, heads, D).transpose(1, 2)  # PRR
        t = (torch.softmax(h @ h.transpose(-1, -2) / math.sqrt(D), -1) @ h).transpose(1, 2).reshape(B, -1, C)
    return lin(t[:, :J].reshape(B, J * C), "head")


def _random_state(model):
    """Random published-layout weights; the shared jumbo MLP's keys (one per block and the model's)
    hold one tensor, as in a saved checkpoint."""
    sd = {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()}
    for k in sd:
        if ".jumbo_mlp." in k:
            sd[k] = sd[k.split(".", 2)[2]]
    return sd


def test_base_sizes_on_the_meta_device():
    with torch.device("meta"):  # the base model's jumbo MLP alone has 170M parameters: shapes only
        for name in ("locatjumbo_base", "jumbo_base"):
            model = timm.create_model(name)
            assert model.embed_dim == 768 and model.blocks[0].attn.num_heads == 12
            assert model.jumbo_mlp.fc1.weight.shape == (4 * J * 768, J * 768)


@pytest.mark.parametrize("name,dim,locat", [("locatjumbo_tiny", 192, True), ("jumbo_tiny", 192, False)])
def test_registered_with_the_published_structure(name, dim, locat):
    model = timm.create_model(name, img_size=32)
    assert isinstance(model, locat_vit.Jumbo) and model.locat == locat and model.num_prefix_tokens == J
    sd = model.state_dict()
    assert sd["cls_token"].shape == (1, J, dim) and sd["pos_embed"].shape == (1, 4, dim)  # patches only
    assert sd["head.weight"].shape == (1000, J * dim) and sd["norm.weight"].shape == (J * dim,)
    assert ("norm_patches.weight" in sd) == locat and any("gaug" in k for k in sd) == locat
    # the one jumbo MLP, shared by the model and every block
    assert all(blk.jumbo_mlp is model.jumbo_mlp for blk in model.blocks)
    assert torch.equal(model.head.weight, torch.zeros_like(model.head.weight))
    assert torch.allclose(model.head.bias, torch.full((1000,), -6.9))  # the published uniform-prediction bias
    model.load_state_dict(_random_state(model), strict=True)


@pytest.mark.parametrize("name,locat,backend", [("locatjumbo_tiny", True, "eager"), ("locatjumbo_tiny", True, "sdpa"),
                                                ("jumbo_tiny", False, None)])
@pytest.mark.parametrize("size,dynamic", [(32, False), (48, True)])
def test_computes_the_published_function_and_gradients_in_float64(name, locat, backend, size, dynamic):
    torch.manual_seed(0)
    kwargs = dict(attn_backend=backend) if backend else {}
    model = timm.create_model(name, img_size=32, num_classes=5, dynamic_img_size=dynamic, **kwargs).double()
    sd = _random_state(model)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out = model(x)
    ref = {k: v.clone().requires_grad_() for k, v in sd.items()}
    want = published_jumbo_forward(ref, x, heads=3, init_grid=(2, 2), locat=locat)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    want.square().sum().backward()
    params = dict(model.named_parameters(), **{"jumbo_mlp.fc1.weight": model.jumbo_mlp.fc1.weight})  # shared: one
    ref_grad = {k: ref[k].grad for k in ("jumbo_mlp.fc1.weight", "blocks.0.attn.qkv.weight", "cls_token",
                                          "pos_embed", "head.weight", "blocks.5.ls3.gamma")}
    if locat:
        ref_grad["blocks.0.attn.gaug.log_var.weight"] = ref["blocks.0.attn.gaug.log_var.weight"].grad
    for k, g in ref_grad.items():
        torch.testing.assert_close(params[k].grad, g, rtol=1e-9, atol=1e-10)
