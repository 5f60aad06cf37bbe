"""refattn.torch: the native forward and backward as a differentiable PyTorch operator."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import refattn.torch as rt  # noqa: E402
from refattn import native  # noqa: E402


def _tensors(dtype=torch.float64, *, Hq=4, Hkv=2, Lq=5, Lk=7, Dk=8, Dv=6, batch=(2,), grad=True):
    generator = torch.Generator().manual_seed(0)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_(grad)

    return normal(*batch, Hq, Lq, Dk), normal(*batch, Hkv, Lk, Dk), normal(*batch, Hkv, Lk, Dv)


def _arrays(*tensors):
    return [t.detach().numpy() for t in tensors]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": "bottom_right", "scale": -0.7},
        {"window": (2, 1), "softcap": 3.0},
        {"mask": "bool"},
        {"bias": "float"},
        {"kv_lengths": "lengths", "causal": "top_left"},
    ],
    ids=["plain", "causal-scale", "window-softcap", "mask", "bias", "kv_lengths"],
)
def test_outputs_and_gradients_are_the_native_cores(options):
    """Forward and backward through the operator give exactly what refattn.native gives for
    the same arrays (the wrapper adds no arithmetic), for every kind of option."""
    q, k, v = _tensors()
    options = dict(options)
    if options.get("mask") == "bool":
        options["mask"] = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) < 0.6
    if options.get("bias") == "float":
        options["bias"] = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)
    if options.get("kv_lengths") == "lengths":
        options["kv_lengths"] = torch.tensor([7, 3])
    out, lse = rt.attention(q, k, v, return_lse=True, **options)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    grad_lse = torch.randn(lse.shape, dtype=lse.dtype, generator=torch.Generator().manual_seed(3))
    torch.autograd.backward((out, lse), (grad_out, grad_lse))

    arrays = {n: rt._array(x) if isinstance(x, torch.Tensor) else x for n, x in options.items()}
    want_out, want_lse = native.attention(*_arrays(q, k, v), return_lse=True, **arrays)
    want = native.attention_backward(
        *_arrays(q, k, v), grad_out.numpy(), grad_lse=grad_lse.numpy(), **arrays
    )
    np.testing.assert_array_equal(out.detach().numpy(), want_out)
    np.testing.assert_array_equal(lse.detach().numpy(), want_lse)
    for name, tensor in (("query", q), ("key", k), ("value", v)):
        np.testing.assert_array_equal(tensor.grad.numpy(), getattr(want, name), err_msg=name)
    if "bias" in options:
        np.testing.assert_array_equal(options["bias"].grad.numpy(), want.bias)


def test_gradients_agree_with_finite_differences():
    """torch.autograd.gradcheck (central differences, float64) through query, key, value and a
    broadcast bias, causal bottom-right with GQA: the backward is the forward's derivative."""
    q, k, v = _tensors(Lq=3, Lk=5, Dk=4, Dv=3, batch=())
    bias = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def call(q, k, v, bias):
        return rt.attention(q, k, v, bias=bias, causal="bottom_right", softcap=2.5)

    assert torch.autograd.gradcheck(call, (q, k, v, bias))


def test_only_lse_in_the_loss():
    """A loss of the lse alone still differentiates (out's gradient is then zero)."""
    q, k, v = _tensors()
    _, lse = rt.attention(q, k, v, return_lse=True)
    lse.sum().backward()
    want = native.attention_backward(
        *_arrays(q, k, v), np.zeros((2, 4, 5, 6)), grad_lse=np.ones((2, 4, 5))
    )
    np.testing.assert_array_equal(q.grad.numpy(), want.query)


def test_zero_copy_inputs_and_outputs():
    """The native core reads the tensors' own memory: a strided view is taken as it is, and
    the output tensor owns the array the core wrote (no copy on the way back)."""
    stored = torch.randn(2, 7, 4, 8, dtype=torch.float32)  # (B, L, H, D), a projection's output
    q = k = v = stored.transpose(1, 2)  # (B, H, L, D), not contiguous
    out = rt.attention(q, k, v)
    want = native.attention(q.numpy(), k.numpy(), v.numpy())
    np.testing.assert_array_equal(out.numpy(), want)
    assert out.numpy().base is not None or out.numpy().flags.owndata is False


def test_bfloat16_tensors():
    q, k, v = _tensors(torch.bfloat16, grad=False)
    out = rt.attention(q, k, v)
    assert out.dtype == torch.bfloat16
    want = native.attention(*(rt._array(t) for t in (q, k, v)))
    np.testing.assert_array_equal(rt._array(out), want)


def test_torch_compile_traces_it_whole():
    """torch.compile with fullgraph=True (no graph breaks) traces forward and backward as the
    two custom operators; the compiled gradients are the eager ones."""
    q, k, v = _tensors()

    def loss(q, k, v):
        return (rt.attention(q, k, v, causal="top_left") ** 2).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled_grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for eager, traced in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(traced, eager, rtol=0, atol=0)


class _Block(torch.nn.Module):
    """One causal self-attention block with GQA: x -> q, k, v -> attention -> out projection."""

    def __init__(self, attention, d_model=16, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        self.attention, self.heads, self.kv_heads = attention, heads, kv_heads
        self.head_dim = head_dim
        self.q = torch.nn.Linear(d_model, heads * head_dim)
        self.kv = torch.nn.Linear(d_model, 2 * kv_heads * head_dim)
        self.out = torch.nn.Linear(heads * head_dim, d_model)

    def forward(self, x):  # x (B, L, d_model)
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, L, 2, self.kv_heads, self.head_dim).unbind(2)
        y = self.attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(y.transpose(1, 2).reshape(B, L, -1))


def _sdpa(q, k, v):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return sdpa(q, k, v, is_causal=True, enable_gqa=True)


def _refattn(q, k, v):
    return rt.attention(q, k, v, causal="top_left")


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_a_model_trains_as_with_torch_sdpa(dtype, rtol):
    """The same model, the same data and the same Adam steps, with refattn.torch in place of
    torch's SDPA: the loss falls, and agrees with SDPA's step for step (to rounding: float64's
    differences stay ~1e-13 after 30 steps; float32's grow with the steps, ~1e-6 relative)."""
    torch.manual_seed(0)
    with_sdpa = _Block(_sdpa).to(dtype)
    with_refattn = copy.deepcopy(with_sdpa)
    with_refattn.attention = _refattn
    x = torch.randn(2, 24, 16, dtype=dtype)
    target = torch.randn(2, 24, 16, dtype=dtype)
    losses = {}
    for name, model in (("sdpa", with_sdpa), ("refattn", with_refattn)):
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses[name] = []
        for _ in range(30):
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), target)
            loss.backward()
            optimiser.step()
            losses[name].append(loss.item())
    assert losses["refattn"][-1] < 0.8 * losses["refattn"][0]
    np.testing.assert_allclose(losses["refattn"], losses["sdpa"], rtol=rtol)


def test_bad_input_is_refused_by_name():
    q, k, v = _tensors(grad=False)
    with pytest.raises(TypeError, match=r"key should be a torch\.Tensor, but got ndarray"):
        rt.attention(q, k.numpy(), v)
    with pytest.raises(ValueError, match=r"key.shape\[-1\] should be 8"):
        rt.attention(q, k[..., :4], v)
    q, k, v = _tensors()
    out = rt.attention(q, k, v)
    with pytest.raises(ValueError, match="grad_out"):
        out.backward(torch.full_like(out, float("nan")))
