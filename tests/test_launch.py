"""configs.Launch and the eager ops' launch plans: a launch made once per call signature, then run by the compiled
kernel's launcher directly.

The CPU tests drive a Launch with a stand-in kernel (what reaches Triton's path, what goes to the compiled
kernel's launcher and with which arguments) and the ops under the interpreter (what a plan holds, when the checks
run); the CUDA tests run the ops both ways and ask for the same bits, and for no memory kept.
"""
import inspect

import pytest
import torch

from locat_kernels import attention, locat_attention, locat_attention_qkvpacked
from locat_kernels.fused import configs

from helpers import make_layers


class _Param:
    def __init__(self, name, is_constexpr, default=inspect.Parameter.empty):
        self.name, self.is_constexpr, self.default = name, is_constexpr, default


class _Compiled:
    function, packed_metadata = "function", "packed_metadata"

    def __init__(self, log):
        self.log = log

    def run(self, *args):
        self.log.append(("direct", args))


class _Kernel:
    """A JITFunction's surface: params, kernel[grid](*args, **meta) returning the compiled kernel."""
    params = [_Param("x", False), _Param("n", False), _Param("scale", False), _Param("BLOCK", True),
              _Param("FLAG", True, default=False)]

    def __init__(self):
        self.log = []
        self.compiled = _Compiled(self.log)

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("triton", grid, args, meta))
            return self.compiled
        return run


class _Driver:
    class active:
        get_current_device = staticmethod(lambda: 0)
        get_current_stream = staticmethod(lambda device: 1234)


@pytest.fixture
def kernel(monkeypatch):
    """The stand-in kernel, with direct launches on (as on a GPU) and a stand-in driver."""
    if configs.knobs is None:
        pytest.skip("this Triton has no knobs (no direct launches)")
    monkeypatch.setattr(configs, "driver", _Driver)
    monkeypatch.setattr(configs, "DIRECT_LAUNCH", True)
    return _Kernel()


def test_a_launch_goes_to_the_compiled_launcher_after_its_first(kernel):
    x = torch.zeros(64)
    launch = configs.Launch(kernel, (3, 2), (5, 0.5), dict(BLOCK=16, num_warps=4))
    launch((x,))
    assert [e[0] for e in kernel.log] == ["triton"] and kernel.log[0][1:] == ((3, 2), (x, 5, 0.5),
                                                                              dict(BLOCK=16, num_warps=4))
    launch((x,))
    # Triton's JITFunction.run arguments: grid, stream, function, metadata, launch metadata and the
    # two hooks (None), the arguments, then the constexprs in parameter order (FLAG's default).
    assert kernel.log[-1] == ("direct", (3, 2, 1, 1234, "function", "packed_metadata", None, None, None,
                                         x, 5, 0.5, 16, False))


def test_a_launch_hook_takes_tritons_path(kernel, monkeypatch):
    launch = configs.Launch(kernel, (1,), (5, 0.5), dict(BLOCK=16))
    x = torch.zeros(64)
    for _ in range(2):
        launch((x,))
    hooks = configs.knobs.runtime.launch_enter_hook

    def hook(metadata):
        pass
    if hasattr(hooks, "calls"):  # Triton >= 3.7: a chain of hooks
        monkeypatch.setattr(hooks, "calls", [hook])
    else:
        monkeypatch.setattr(configs.knobs.runtime, "launch_enter_hook", hook)
    launch((x,))
    assert [e[0] for e in kernel.log] == ["triton", "direct", "triton"]


def test_a_replaced_launcher_sees_every_launch(kernel):
    launch = configs.Launch(kernel, (1,), (5, 0.5), dict(BLOCK=16))
    x = torch.zeros(64)
    launch((x,))
    with configs.recorded_launches() as launches:
        launch((x,))
    assert launches == [(kernel, (1,), (x, 5, 0.5), dict(BLOCK=16))]
    assert [e[0] for e in kernel.log] == ["triton"]  # recorded, not run


def test_a_traced_launch_leaves_the_register_cap_out(kernel):
    """A config's register cap (``maxnreg``) goes to eager launches; a traced one (torch.compile) leaves it out:
    Inductor keeps a user kernel's warps and stages, not the cap (benchmarks/NOTES.md, v34)."""
    launch = configs.Launch(kernel, (1,), (5, 0.5), dict(BLOCK=16, num_warps=4, maxnreg=96))
    x = torch.zeros(64)
    with configs.recorded_launches() as launches:
        launch((x,))
        launch((x,), traced=True)
    assert [meta for *_, meta in launches] == [dict(BLOCK=16, num_warps=4, maxnreg=96), dict(BLOCK=16, num_warps=4)]


def test_a_runtime_argument_left_to_the_keywords_is_never_cached(kernel):
    """The compiled launcher takes every runtime argument in order: one given by keyword leaves Triton's path on."""
    launch = configs.Launch(kernel, (1,), (5,), dict(scale=0.5, BLOCK=16))
    for _ in range(3):
        launch((torch.zeros(64),))
    assert [e[0] for e in kernel.log] == ["triton"] * 3 and not launch.compiled


def test_a_launch_holds_no_tensor():
    """A plan keeps its launches for the process: a tensor among their arguments would stay allocated."""
    from locat_kernels.fused import forward

    with pytest.raises(TypeError, match="hold no tensor"):
        configs.Launch(forward._forward_kernel, (1,), (5, torch.zeros(3)), {})


def test_a_signature_tells_apart_what_a_launch_specializes_on():
    x = torch.zeros(4, 8)
    same = configs.signature(x.clone())
    assert configs.signature(x) == same
    for other in (x.double(), x[:, 1:5], x.t(), x[:2], x.view(8, 4)):  # dtype, alignment, strides, shapes
        assert configs.signature(other) != same
    assert x[:, 1:5].data_ptr() % 16  # a float32 view one element in: not 16-byte aligned
    assert configs.signature(None, x) == (None, *same)


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(configs.Plans, "MAX_ENTRIES", 4)
    plans = configs.Plans()
    first = plans("a")
    assert plans("a") is first
    for n in range(10):
        plans(n)["launch"] = n
    assert len(plans.plans) <= 4


class _Counted(configs.Launch):
    made = 0

    def __init__(self, *args):
        super().__init__(*args)
        type(self).made += 1


def _packed_call(qkv, layers, **kwargs):
    out = locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1, backend="triton", **kwargs)
    out.sum().backward()
    return out


def test_an_eager_signature_makes_its_launches_once(device, monkeypatch):
    """The second call of a signature makes no Launch; a change of alignment, dtype or strides makes new ones."""
    monkeypatch.setattr(attention, "_PLANS", configs.Plans())  # another test's call may have planned these signatures
    monkeypatch.setattr(configs, "Launch", _Counted)
    monkeypatch.setattr(_Counted, "made", 0)
    base = torch.randn(2, 1 + 4 * 6, 3, 2, 17, device=device)
    layers = make_layers(16, device=device)
    counts = []
    for qkv in (base[..., :16], base[..., :16], base[..., 1:], base[..., 1:], base[..., :16].half(),
                base[..., :16].contiguous(), base[..., :16]):
        _packed_call(qkv.detach().requires_grad_(), layers)
        counts.append(_Counted.made)
    made = [b - a for a, b in zip([0, *counts], counts)]
    assert made[0] == 5 and made[1] == 0, made  # f+b in fp32: five launches (four launch sites' Launches)
    assert made[2] > 0 and made[3] == 0, made  # one element in: not 16-byte aligned
    assert made[4] > 0 and made[5] > 0 and made[6] == 0, made  # fp16; contiguous strides; the first again


@pytest.mark.parametrize("packed", [False, True], ids=["views", "qkvpacked"])
def test_an_eager_inference_call_makes_its_launch_once_and_untraced(device, monkeypatch, packed):
    """A call that records no gradient (the one launch at rate 1): one Launch at its signature's first call, none
    at the second, never through ``wrap_triton`` (v46's first draft passed the plan as ``traced``: every call traced
    and planless, 2.0-5.2x the host time, benchmarks/NOTES.md)."""
    monkeypatch.setattr(attention, "_PLANS", configs.Plans())  # another test's call may have planned this signature
    monkeypatch.setattr(configs, "Launch", _Counted)
    monkeypatch.setattr(_Counted, "made", 0)
    traced, launcher = [], configs.launcher
    monkeypatch.setattr(configs, "launcher", lambda kernel, t: traced.append(t) or launcher(kernel, t))
    qkv = torch.randn(2, 1 + 4 * 6, 3, 2, 16, device=device)
    layers = make_layers(16, device=device)
    made = []
    for _ in range(2):
        with torch.no_grad():
            if packed:
                locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1, backend="triton")
            else:
                locat_attention(*qkv.permute(2, 0, 3, 1, 4).unbind(0), *layers, (4, 6), num_prefix_tokens=1,
                                backend="triton")
        made.append(_Counted.made)
    assert made == [1, 1] and traced == [False, False], (made, traced)


def test_a_known_call_skips_the_checks_and_a_bad_one_still_raises(device, monkeypatch):
    """A call whose signature passed the checks before goes straight to the launches; any other call is checked."""
    qkv = torch.randn(2, 1 + 4 * 6, 3, 2, 16, device=device, requires_grad=True)
    layers = make_layers(16, device=device)
    first = _packed_call(qkv, layers, scale=0.3)
    checks = []
    check = attention._check
    monkeypatch.setattr(attention, "_check", lambda *args: checks.append(args) or check(*args))
    again = _packed_call(qkv, layers, scale=0.3)
    assert not checks
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="N=25 tokens"):
        locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=2, backend="triton", scale=0.3)
    with pytest.raises(ValueError, match="log_var_weight must have shape"):
        locat_attention_qkvpacked(qkv, layers[0][:, :8], *layers[1:], (4, 6), num_prefix_tokens=1,
                                  backend="triton", scale=0.3)
    assert len(checks) == 2
    with torch.no_grad():  # the same signature without a gradient: the one-launch forward, to float32 rounding
        torch.testing.assert_close(locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1,
                                                             backend="triton", scale=0.3), first, rtol=1e-5, atol=1e-6)
    assert len(checks) == 2


def test_a_tensor_argument_is_never_kept_in_a_plan_key(device):
    """A 0-d tensor ``scale`` works as a float does, and no plan's key holds it (it would stay allocated)."""
    qkv = torch.randn(1, 1 + 4 * 6, 3, 2, 16, device=device)
    layers = [w.detach() for w in make_layers(16, device=device)]
    scale = torch.tensor(0.3)
    out = locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1, backend="triton", scale=scale)
    torch.testing.assert_close(out, locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1,
                                                              backend="triton", scale=0.3), rtol=0, atol=0)

    def tensors_in(x):
        if isinstance(x, torch.Tensor):
            return 1
        return sum(map(tensors_in, x)) if isinstance(x, tuple) else 0
    assert not any(tensors_in(key) for key in attention._PLANS.plans)


@pytest.mark.parametrize("call", ["locat", "packed", "rate2", "gaussian_queries", "gaussian_attention", "window"])
def test_every_launch_passes_its_tensors_first(device, call):
    """Every kernel launch of every entry point, forward and backward, passes its tensors (or None) before
    any other argument: the layout a Launch takes (its tensors, then the rest)."""
    from locat_kernels import gaussian_attention

    from helpers import make_inputs

    grid, P = (4, 6), 0 if call == "window" else 1
    q, k, v, var, alpha = make_inputs(2, 2, grid, P, 16, device=device)
    layers = make_layers(16, device=device)
    N = q.shape[2]
    with configs.recorded_launches() as launches:
        if call == "gaussian_attention":
            out = gaussian_attention(q, k, v, var, alpha, grid, num_prefix_tokens=P, backend="triton")
        elif call == "window":
            bias = torch.randn(2, N, N, device=device, requires_grad=True)
            mask = torch.zeros(1, N, N, device=device)
            out = locat_attention(q, k, v, *layers, grid, attn_bias=bias, window_mask=mask, backend="triton")
        elif call == "packed":
            qkv = torch.stack([q, k, v]).permute(1, 3, 0, 2, 4)
            out = locat_attention_qkvpacked(qkv, *layers, grid, num_prefix_tokens=P, backend="triton")
        else:
            out = locat_attention(q, k, v, *layers, grid, num_prefix_tokens=P, rate=2 if call == "rate2" else 1,
                                  backend="triton", gaussian_queries=q * 0.5 if call == "gaussian_queries" else None)
        out.sum().backward()
    assert len(launches) >= 2
    for kernel, _, args, _ in launches:
        lead = next(i for i, a in enumerate(args) if not (a is None or isinstance(a, torch.Tensor)))
        assert not any(isinstance(a, torch.Tensor) for a in args[lead:]), kernel.fn.__name__


def test_an_eager_layer_call_makes_its_launches_and_allocations_and_no_more(device, monkeypatch):
    """The host budget of the LocAt layers' eager path (``locat_attention_qkvpacked``, forward+backward, fp32):
    five launches, ten output buffers, no host call of Triton's constexpr ``cdiv``. Each costs host time on every
    layer of every step (benchmarks/NOTES.md, v30: a small torch.empty 5.6-6.6 us and ``triton.cdiv`` 2.2 us on the
    H200 machine; the host time of the eager layers decides small models' eager steps): a change that adds one
    changes this budget on purpose."""
    import triton

    def host_cdiv(*args):
        raise AssertionError("triton.cdiv called on the host: configs.cdiv is plain integer arithmetic")

    empty, buffers = configs.empty, []
    monkeypatch.setattr(triton, "cdiv", host_cdiv)
    monkeypatch.setattr(configs, "empty", lambda *args, **kwargs: buffers.append(args[0]) or empty(*args, **kwargs))
    qkv = torch.randn(2, 1 + 4 * 6, 3, 2, 16, device=device, requires_grad=True)
    layers = make_layers(16, device=device)
    with configs.recorded_launches() as launches:
        out = locat_attention_qkvpacked(qkv, *layers, (4, 6), num_prefix_tokens=1, backend="triton")
        out.sum().backward()
    assert [kernel.fn.__name__ for kernel, *_ in launches] == [
        "_gaug_forward_kernel", "_forward_kernel", "_backward_dq_kernel", "_backward_dkdv_kernel",
        "_gaug_backward_kernel"]
    assert len(buffers) == 10, buffers  # var, alpha, radius, out, lse; dqkv, delta, dvar, dalpha, the partial sums


def test_this_triton_launches_as_a_launch_expects():
    import triton

    version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    if not (3, 6) <= version <= (3, 8):
        pytest.skip(f"checked against Triton 3.6 to 3.8; {triton.__version__} is checked at import instead")
    assert configs._triton_launches_as_expected()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches on a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_direct_launches_give_tritons_bits(monkeypatch, dtype):
    if not configs.DIRECT_LAUNCH:
        pytest.skip("direct launches are off for this Triton")
    B, H, gh, gw, P, D = 2, 3, 6, 5, 1, 64
    N = P + gh * gw
    layers = make_layers(D, device="cuda")
    # q, k, v as views of one qkv tensor, then a copy one element in (not 16-byte aligned)
    qkv = torch.randn(B, N, 3, H, D + 1, device="cuda", dtype=dtype)

    def run(offset):
        q, k, v = (t.detach().requires_grad_() for t in qkv[..., offset:offset + D].permute(2, 0, 3, 1, 4).unbind(0))
        weights = [w.detach().requires_grad_() for w in layers]
        out = locat_attention(q, k, v, *weights, (gh, gw), num_prefix_tokens=P, backend="triton")
        out.backward(torch.ones_like(out))
        return [out, q.grad, k.grad, v.grad, *(w.grad for w in weights)]

    results = {}
    for direct in (False, True):
        monkeypatch.setattr(configs, "DIRECT_LAUNCH", direct)
        results[direct] = [run(offset) for offset in (0, 1, 0, 1)]  # the second round of each: its plan's launches
    launches = [launch for plan in attention._PLANS.plans.values() for launch in plan.values()
                if isinstance(launch, configs.Launch)]
    assert sum(bool(launch.compiled) for launch in launches) >= 2  # aligned and not: a plan each, launched directly
    for ours, triton_path in zip(results[True], results[False]):
        for a, b in zip(ours, triton_path):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches on a GPU")
def test_cuda_eager_calls_keep_no_memory():
    """Eager forward+backward calls of the layers' op leave the allocated memory as they found it: no launch
    plan keeps a tensor alive (v22-v28's dk/dv launch kept every call's qkv gradient)."""
    layers = make_layers(64, device="cuda")

    def call():  # the gradients returned and dropped, none accumulated
        qkv = torch.randn(2, 37, 3, 3, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        out = locat_attention_qkvpacked(qkv, *layers, (6, 6), num_prefix_tokens=1, backend="triton")
        torch.autograd.grad(out.sum(), [qkv, *layers])

    call()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
