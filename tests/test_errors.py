"""Bad input gives an error that names the argument, what was expected and what came."""
import warnings

import pytest
import timm
import torch

import locat_vit  # noqa: F401  (registers the LocAtViT models with timm)
from locat_kernels import gaussian_attention, locat_attention, locat_attention_qkvpacked, resolve_backend


def _ok(B=1, H=2, grid=(3, 4), P=1, D=16, dtype=torch.float32):
    N = P + grid[0] * grid[1]
    q, k, v = torch.randn(3, B, H, N, D, dtype=dtype)
    return dict(q=q, k=k, v=v, var=torch.ones(B, H, grid[0] * grid[1], 2), alpha=torch.ones(B, H, grid[0] * grid[1]),
                grid_size=grid, num_prefix_tokens=P)


def _call(backend="triton", **kw):
    args = _ok()
    args.update(kw)
    return gaussian_attention(**args, backend=backend)


@pytest.mark.parametrize("change,exc,words", [
    (dict(num_prefix_tokens=2), ValueError, ["N=13", "2 + 3*4"]),
    (dict(grid_size=(4, 4)), ValueError, ["N=13"]),
    (dict(grid_size=(0, 4)), ValueError, ["grid sides must be >= 1"]),
    (dict(grid_size="3x4"), ValueError, ["grid_size"]),
    (dict(q=torch.randn(2, 13, 16)), ValueError, ["q must be 4-D"]),
    (dict(k=torch.randn(1, 2, 12, 16)), ValueError, ["k must have q's shape"]),
    (dict(v=torch.randn(1, 2, 13, 16, dtype=torch.float64)), TypeError, ["v has dtype torch.float64"]),
    (dict(var=torch.ones(1, 2, 12, 3)), ValueError, ["var must have shape", "(1, 2, 12, 2)"]),
    (dict(var=torch.ones(1, 2, 12, 2, dtype=torch.float16)), TypeError, ["var must be float32"]),
    (dict(alpha=torch.ones(1, 2, 13)), ValueError, ["alpha must have shape"]),
    (dict(alpha=[1.0]), TypeError, ["alpha must be a torch.Tensor"]),
    (dict(rate=3), ValueError, ["rate must be an int >= 1 dividing"]),
    (dict(num_prefix_tokens=-1), ValueError, ["num_prefix_tokens"]),
    (dict(backend="fast"), ValueError, ["backend must be one of"]),
])
def test_bad_arguments_are_named(change, exc, words):
    with pytest.raises(exc) as e:
        _call(**change) if "backend" not in change else gaussian_attention(**_ok(), backend=change["backend"])
    for w in words:
        assert w in str(e.value), str(e.value)


def test_triton_backend_checks(device):
    var, alpha = torch.ones(1, 2, 12, 2, device=device), torch.ones(1, 2, 12, device=device)
    x = torch.randn(1, 2, 13, 20, device=device)
    with pytest.raises(ValueError, match="head_dim that is a multiple of 8 up to 256, got 20"):
        _call(q=x, k=x, v=x, var=var, alpha=alpha)
    x = torch.randn(1, 2, 16, 13, device=device).transpose(-1, -2)
    with pytest.raises(ValueError, match="q must have a contiguous last dimension"):
        _call(q=x, k=x.contiguous(), v=x.contiguous(), var=var, alpha=alpha)
    x = torch.randn(1, 2, 13, 16, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="take dtypes"):
        _call(q=x, k=x, v=x, var=var.double(), alpha=alpha.double())
    n = (1 << 20) + 1  # one token past the kernels' limit, as expanded views: no memory
    x = torch.zeros(1, 1, 1, 16, device=device).expand(1, 2, n, 16)
    var, alpha = torch.ones(1, 1, 1, 2, device=device).expand(1, 2, n - 1, 2), torch.ones(1, 2, n - 1, device=device)
    with pytest.raises(ValueError, match="at most 1048576 tokens .* got 1048577"):
        gaussian_attention(x, x, x, var, alpha, (1, n - 1), num_prefix_tokens=1, backend="triton")


def test_auto_falls_back_where_triton_does_not_take_the_input(device):
    """backend='auto' on a head_dim the kernels refuse runs the dense-bias path (on a GPU with one
    warning) and computes the same function; an explicit 'triton' raises (above)."""
    args = _ok(D=20)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    assert resolve_backend("auto", args["q"]) == "sdpa"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gaussian_attention(**args, backend="auto")
    if device == "cuda":
        assert any("head_dim that is a multiple of 8" in str(w.message) for w in caught)
    torch.testing.assert_close(got, gaussian_attention(**args, backend="reference"), rtol=1e-5, atol=1e-5)


def test_auto_is_sdpa_off_cuda_and_triton_on_it(device):
    q = torch.randn(1, 2, 13, 16, device=device)
    assert resolve_backend("auto", q) == ("triton" if device == "cuda" else "sdpa")


def test_locat_attention_names_bad_layer_tensors():
    args = _ok()
    q, k, v = args["q"], args["k"], args["v"]
    good = [torch.zeros(2, 16), torch.zeros(2), torch.zeros(1, 16), torch.zeros(1)]
    for i, (name, bad) in enumerate((("log_var_weight", torch.zeros(2, 8)), ("log_var_bias", torch.zeros(3)),
                                     ("log_alpha_weight", torch.zeros(2, 16)), ("log_alpha_bias", torch.zeros(1, 1)))):
        weights = list(good)
        weights[i] = bad
        with pytest.raises(ValueError, match=f"{name} must have shape"):
            locat_attention(q, k, v, *weights, (3, 4), num_prefix_tokens=1)
    with pytest.raises(TypeError, match="log_var_bias must be a torch.Tensor"):
        locat_attention(q, k, v, good[0], [0.0, 0.0], *good[2:], (3, 4), num_prefix_tokens=1)


def test_qkvpacked_names_a_qkv_of_the_wrong_shape():
    layers = [torch.zeros(2, 16), torch.zeros(2), torch.zeros(1, 16), torch.zeros(1)]
    for bad in (torch.zeros(1, 13, 2, 2, 16), torch.zeros(1, 2, 13, 16)):
        with pytest.raises(ValueError, match=r"qkv must have shape \(B, N, 3, H, D\)"):
            locat_attention_qkvpacked(bad, *layers, (3, 4), num_prefix_tokens=1)
    with pytest.raises(TypeError, match="qkv must be a torch.Tensor"):
        locat_attention_qkvpacked([0.0], *layers, (3, 4), num_prefix_tokens=1)
    qkv = torch.zeros(1, 12, 3, 2, 16)  # 12 tokens where 1 + 3 * 4 are due: locat_attention's own check
    with pytest.raises(ValueError, match="q has N=12 tokens"):
        locat_attention_qkvpacked(qkv, *layers, (3, 4), num_prefix_tokens=1)


def test_device_mismatch():
    args = _ok()
    args["var"] = args["var"].to("meta")
    with pytest.raises(ValueError, match="var is on meta but q is on cpu"):
        gaussian_attention(**args)


def test_model_rejects_attention_dropout_and_unknown_backend():
    with pytest.raises(ValueError, match="attention dropout"):
        timm.create_model("locatvit_tiny", img_size=32, attn_drop_rate=0.1)
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        timm.create_model("locatvit_tiny", img_size=32, attn_backend="cuda")
    with pytest.raises(ValueError, match="gaussian_mode must be one of"):
        timm.create_model("locatvit_tiny", img_size=32, gaussian_mode="fast")


def test_img_size_not_a_multiple_of_the_patch_is_refused_by_name():
    with pytest.raises(ValueError, match=r"img_size \(70, 70\) is not a multiple of patch_size \(16, 16\)"):
        timm.create_model("locatvit_tiny", img_size=70)
    model = timm.create_model("locatvit_tiny", img_size=70, dynamic_img_size=True, dynamic_img_pad=True,
                              num_classes=3)  # padded to whole patches: allowed
    assert model(torch.randn(1, 3, 70, 70)).shape == (1, 3)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_an_empty_batch_gives_an_empty_output_like_timm_vit(device, backend):
    model = timm.create_model("locatvit_tiny", img_size=32, num_classes=3, attn_backend=backend).to(device)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3).to(device)
    x = torch.empty(0, 3, 32, 32, device=device)
    assert model(x).shape == vit(x).shape == (0, 3)
