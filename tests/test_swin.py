"""LocAt on Swin (timm's SwinTransformer): registry, published keys, and the published function in float64
against a Swin written out here from the method (window-local Gaussian with the window as the build
grid, added to the relative position bias and the shift mask; PRR before the head)."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import locat_vit
from helpers import check_fused_model, check_locatify
from locat_kernels import gaussian_bias


def _windows(t, ws):
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows row-major, batch first."""
    B, H, W, C = t.shape
    return t.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def _unwindows(t, ws, B, H, W):
    C = t.shape[-1]
    return t.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def _relative_bias(table, ws):
    """(H, N, N) from the (2 ws - 1)^2 x H table: entry (dy + ws - 1, dx + ws - 1) for query minus key."""
    y, x = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    y, x = y.flatten(), x.flatten()
    index = (y[:, None] - y[None, :] + ws - 1) * (2 * ws - 1) + (x[:, None] - x[None, :] + ws - 1)
    return table[index].permute(2, 0, 1)


def _shift_mask(H, W, ws, shift):
    """(nW, N, N): -100 between tokens that came from different regions of the rolled map, else 0."""
    region = torch.zeros(H, W)
    for i, hs in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
        for j, wsl in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
            region[hs, wsl] = 3 * i + j
    r = _windows(region[None, :, :, None], ws)[..., 0]
    return (r[:, :, None] != r[:, None, :]).double() * -100.0


def published_swin_forward(sd, x, *, depths, heads, ws, patch=4):
    """The published LocAt Swin from a state dict (eval, no drop path), written out."""
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], 1e-5)  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd.get(n + ".bias"))  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).permute(0, 2, 3, 1)
    t = ln(t, "patch_embed.norm")
    for s, (depth, h) in enumerate(zip(depths, heads)):
        if s > 0:  # patch merging: odd sides padded, the 2 x 2 neighbours concatenated (row offset fastest)
            t = F.pad(t, (0, 0, 0, t.shape[2] % 2, 0, t.shape[1] % 2))
            B, H, W, C = t.shape
            t = t.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
            t = lin(ln(t, f"layers.{s}.downsample.norm"), f"layers.{s}.downsample.reduction")
        for i in range(depth):
            b = f"layers.{s}.blocks.{i}."
            B, H, W, C = t.shape
            w = min(ws, H)  # a window as large as the map when the map is smaller (then no shift): the
            shift = w // 2 if i % 2 and H > ws else 0  # Gaussian's build grid is that window
            coef = w * w
            u = ln(t, b + "norm1")
            if shift:
                u = torch.roll(u, (-shift, -shift), (1, 2))
            u = _windows(u, w)
            N, D = w * w, C // h
            q, k, v = lin(u, b + "attn.qkv").reshape(-1, N, 3, h, D).permute(2, 0, 3, 1, 4)
            var = coef * torch.sigmoid(lin(q, b + "attn.gaug.log_var") - math.log(coef - 1))
            alpha = F.softplus(lin(q, b + "attn.gaug.log_alpha"))
            bias = gaussian_bias(var, alpha, (w, w), init_grid_size=(w, w))
            bias = bias + _relative_bias(sd[b + "attn.relative_position_bias_table"], w)
            if shift:
                mask = _shift_mask(H, W, w, shift)
                bias = (bias.view(B, -1, h, N, N) + mask[None, :, None]).view(-1, h, N, N)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, -1) @ v
            a = lin(a.transpose(1, 2).reshape(-1, N, C), b + "attn.proj")
            a = _unwindows(a, w, B, H, W)
            if shift:
                a = torch.roll(a, (shift, shift), (1, 2))
            t = t + a
            t = t + lin(F.gelu(lin(ln(t, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    t = ln(t, "norm")
    B, H, W, C = t.shape
    h, D = heads[-1], C // heads[-1]
    z = t.reshape(B, H * W, h, D).transpose(1, 2)  # PRR over all positions, the last stage's heads
    z = (torch.softmax(z @ z.transpose(-1, -2) / math.sqrt(D), -1) @ z).transpose(1, 2).reshape(B, H * W, C)
    return lin(z.mean(1), "head.fc")


def _random_state(model):
    return {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,base", [("locatswin_tiny", "swin_tiny_patch4_window7_224"),
                                       ("locatswin_base", "swin_base_patch4_window7_224")])
def test_registered_with_the_published_keys(name, base):
    model = timm.create_model(name, pretrained=False)
    assert isinstance(model, locat_vit.LocAtSwin)
    swin = timm.create_model(base, pretrained=False)
    gaug = {f"{k.rsplit('.attn.', 1)[0]}.attn.gaug.{layer}.{p}" for k in swin.state_dict()
            if k.endswith("attn.qkv.weight") for layer in ("log_var", "log_alpha") for p in ("weight", "bias")}
    assert set(model.state_dict()) == set(swin.state_dict()) | gaug
    assert model.layers[0].blocks[0].attn.gaug.init_grid_size == (7, 7)
    model.load_state_dict(_random_state(model), strict=True)


# (image size, window, depths, heads): shifted windows with masks in both stages; windows as large as
# a 7 x 7 map and shrunk to a 4 x 4 one (no shift there)
CONFIGS = [(64, 4, (2, 2), (2, 4)), (56, 7, (2, 2, 2), (2, 4, 4))]  # 56 px: 14, 7, then 4 x 4 (padded)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("img,ws,depths,heads", CONFIGS)
def test_computes_the_published_function_and_gradients_in_float64(backend, img, ws, depths, heads):
    torch.manual_seed(0)
    model = timm.create_model("locatswin_tiny", img_size=img, window_size=ws, embed_dim=16, depths=depths,
                              num_heads=heads, num_classes=5, drop_path_rate=0.0, attn_backend=backend).double().eval()
    sd = _random_state(model)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    out = model(x)
    ref = {k: v.clone().requires_grad_() for k, v in sd.items()}
    want = published_swin_forward(ref, x, depths=depths, heads=heads, ws=ws)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    want.square().sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[k].grad, rtol=1e-9, atol=1e-10, msg=k)


def test_training_mode_and_every_block_gets_the_gaussian():
    """In training mode (no drop path) the same function; a zero amplitude (alpha = softplus(-inf))
    everywhere gives timm's Swin with PRR, so the Gaussian is what differs."""
    torch.manual_seed(0)
    kwargs = dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5,
                  drop_path_rate=0.0)
    model = timm.create_model("locatswin_tiny", **kwargs).double().train()
    sd = _random_state(model)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    want = published_swin_forward(sd, x, depths=(2, 2), heads=(2, 4), ws=4)
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    swin = timm.create_model("swin_tiny_patch4_window7_224", **kwargs).double().eval()
    swin.load_state_dict({k: v for k, v in sd.items() if ".gaug." not in k})
    for name, p in model.named_parameters():
        if name.endswith("gaug.log_alpha.bias"):
            p.data.fill_(-1e4)
    feats = swin.forward_features(x)
    B, H, W, C = feats.shape
    refined = locat_vit.patch_refinement(feats.reshape(B, H * W, C), 4).view(B, H, W, C)
    torch.testing.assert_close(model.eval()(x), swin.forward_head(refined), rtol=1e-10, atol=1e-10)
    assert (model(x) - want).abs().max() > 1e-7  # the Gaussian is seen far above the comparisons' 1e-10


@pytest.mark.parametrize("img,ws,depths,heads", CONFIGS)
def test_the_window_kernel_matches_float64(device, img, ws, depths, heads):
    """attn_backend="triton" (the window kernel: the relative position bias and the shift mask read
    per tile) in float32 against the eager model in float64: the output and every parameter's
    gradient, the relative position tables' included."""
    torch.manual_seed(0)
    kwargs = dict(img_size=img, window_size=ws, embed_dim=16, depths=depths, num_heads=heads, num_classes=5,
                  drop_path_rate=0.0)
    ref = timm.create_model("locatswin_tiny", attn_backend="eager", **kwargs).double()
    ref.load_state_dict(_random_state(ref))
    fused = timm.create_model("locatswin_tiny", attn_backend="triton", **kwargs)
    fused.load_state_dict(ref.state_dict())
    fused.to(device)
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    # 2e-4: the last block's log_alpha.bias gradient (norm 9e-7) is a sum that cancels: its float32 rounding
    # measured 1.35e-4 relative on one CI machine's CPU (eager PyTorch in float32: 3.1e-5), under 1e-4 on
    # the one before; a wrong gradient is off by order one.
    check_fused_model(fused, ref, x, grad_tol=2e-4)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        timm.create_model("locatswin_tiny", attn_backend="flash")


def test_locatify_turns_timms_swin_into_locat_swin_keeping_every_weight():
    kwargs = dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5,
                  drop_path_rate=0.0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", **kwargs).double()
    built = timm.create_model("locatswin_tiny", **kwargs, attn_backend="sdpa").double()
    model = check_locatify(swin, built, torch.randn(2, 3, 64, 64, dtype=torch.float64), attn_backend="sdpa")
    assert isinstance(model, locat_vit.LocAtSwin)
    with pytest.raises(ValueError, match="already a LocAt model"):
        locat_vit.locatify(model)
