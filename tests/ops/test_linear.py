"""The fp32 linear op (mmgroupmamba.ops.linear): the 3xTF32 Triton GEMM
against a float64 product (interpreter on the CPU, compiled with ``--gpu``),
the weight split, the custom op's gradients and fake kernel, the dispatch
and its errors, and the backbone's fast path against the plain one."""
import pytest
import torch
import torch.nn.functional as F

from mmgroupmamba.ops import linear as lin


def _make(shape_x, shape_w, bias, device, seed=0, strided=False):
    gen = torch.Generator().manual_seed(seed)
    if strided:
        # a slice of a wider last axis (sliced on the device: .to() would
        # compact it): rows with a stride, read in place
        wide = torch.randn(*shape_x[:-1], shape_x[-1] + 5, generator=gen).to(device)
        x = wide[..., 2:2 + shape_x[-1]]
    else:
        x = torch.randn(*shape_x, generator=gen).to(device)
    w = torch.randn(*shape_w, generator=gen) / shape_w[-1] ** 0.5
    b = torch.randn(shape_w[0], generator=gen) if bias else None
    return x, w.to(device), None if b is None else b.to(device)


def _errors(x, w, b):
    """Largest |error| against float64 of ours and of PyTorch's fp32 GEMM."""
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    ours = lin.linear_triton(x, *lin.tf32_split(w), b)
    assert ours.shape == ref.shape and ours.dtype == torch.float32 and ours.is_contiguous()
    return ((ours.double() - ref).abs().max().item(),
            (F.linear(x, w, b).double() - ref).abs().max().item())


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape_x,shape_w,strided', [
    ((70, 24), (40, 24), False),
    ((3, 5, 7, 33), (17, 33), False),          # leading dims, ragged K and N
    ((40, 200), (24, 200), False),             # K over several promotions, ragged end
    ((4, 9, 12), (20, 12), True),              # strided rows
    ((6, 1), (3, 1), False),                   # K = 1
])
def test_triton_gemm_matches_float64(shape_x, shape_w, strided, bias, kernel_device):
    x, w, b = _make(shape_x, shape_w, bias, kernel_device, strided=strided)
    assert strided != x.is_contiguous()
    err, err_torch = _errors(x, w, b)
    assert err <= 4 * err_torch + 1e-6, (err, err_torch)


def test_tf32x3_is_fp32_accurate_not_tf32(kernel_device):
    if kernel_device != 'cuda':
        pytest.skip('3xTF32 runs on tensor cores: compiled kernels only (--gpu)')
    for shape_x, shape_w in [((8192, 512), (64, 512)), ((8192, 1392), (348, 1392)),
                             ((8192, 64), (512, 64))]:
        x, w, b = _make(shape_x, shape_w, True, 'cuda')
        err, err_ieee = _errors(x, w, b)
        allow = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = True
            ref = F.linear(x.double(), w.double(), b.double())
            err_tf32 = (F.linear(x, w, b).double() - ref).abs().max().item()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow
        assert err <= 3 * err_ieee, (shape_w, err, err_ieee)
        assert err_tf32 > 100 * err, (shape_w, err_tf32, err)   # the split buys the accuracy


def test_tf32_split_is_exact_and_carries_the_gradient(kernel_device, monkeypatch):
    w = torch.randn(64, 48, device=kernel_device) * torch.logspace(-3, 3, 48,
                                                                    device=kernel_device)
    hi, lo = lin.tf32_split(w)
    assert torch.equal(hi + lo, w)                                  # exact
    assert not (hi.view(torch.int32) & 0x1FFF).any()                # 10 mantissa bits
    assert (lo.abs() <= hi.abs() * 2.0 ** -11).all()                # rounded to nearest
    # through linear(): the weight gets its whole gradient, via lo
    monkeypatch.setattr(lin, '_use_triton', lambda x, wt, mode: mode == 'tf32x3')
    x, w, b = _make((6, 5, 48), (64, 48), True, kernel_device, seed=3)
    wl = w.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(lin.linear(x, wl, b).square().sum(), wl)
    w64 = w.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(F.linear(x.double(), w64, b.double()).square().sum(), w64)
    assert ((gw.double() - want).abs().max() / want.abs().max()).item() < 1e-5


def test_custom_op_gradients_and_fake_kernel(kernel_device):
    x, w, b = _make((2, 3, 5, 40), (24, 40), True, kernel_device, seed=2)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y = torch.ops.mmgroupmamba.linear_tf32x3(x, *lin.tf32_split(w), b)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.linear(x64, w64, b64)
    want = torch.autograd.grad(ref, (x64, w64, b64), dy.double())
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got, want):
        assert g.shape == r.shape and torch.allclose(g.double(), r, rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.mmgroupmamba.linear_tf32x3, (x, *lin.tf32_split(w), b),
                          test_utils=('test_schema', 'test_faketensor'))


def test_dispatch_and_errors():
    x, w, b = _make((5, 8), (3, 8), True, 'cpu')
    assert torch.equal(lin.linear(x, w, b), F.linear(x, w, b))      # the CPU is PyTorch's
    with pytest.raises(ValueError, match='fp32_gemm'):
        lin.linear(x, w, b, fp32_gemm='tf32')
    with pytest.raises(ValueError, match=r'x: expected \(\.\.\., K\) with K = 8'):
        lin.linear(x[:, :7], w, b)
    with pytest.raises(ValueError, match=r'bias: expected shape \(3,\)'):
        lin.linear(x, w, b[:2])
    with pytest.raises(ValueError, match='weight: expected'):
        lin.linear(x, w[None])
    with pytest.raises(ValueError, match='fp32_gemm'):
        lin.set_fp32_gemm(torch.nn.Linear(2, 2), 'fast')
    if torch.cuda.is_available():
        xc, wc = x[:1].cuda().expand(lin.MIN_ROWS, 8).contiguous(), w.cuda()
        assert lin._use_triton(xc, wc, 'tf32x3') and not lin._use_triton(xc, wc, 'ieee')
        assert not lin._use_triton(xc[:lin.MIN_ROWS - 1], wc, 'tf32x3')
        with torch.autocast('cuda', dtype=torch.float16):
            assert not lin._use_triton(xc, wc, 'tf32x3')


@pytest.mark.parametrize('family', ['groupmamba', 'spatialmamba'])
def test_backbone_fast_path_matches_plain_path(family, kernel_device, monkeypatch):
    """A backbone with every Linear on the Triton kernel (interpreter on the
    CPU, 3xTF32 with --gpu) against fp32_gemm='ieee' (PyTorch's GEMMs)."""
    from mmgroupmamba.models import GroupMamba, SpatialMamba
    if family == 'groupmamba':
        net = GroupMamba
        arch = dict(stem_channels=8, embed_dims=(16, 32), depths=(1, 1), mlp_ratios=(2, 2))
        per_block = 5          # proj, FFN fc1 + fc2, the channel attention's 2
    else:
        net = SpatialMamba
        arch = dict(embed_dims=(16, 32), depths=(1, 1))
        per_block = 4          # SSM in_proj + out_proj, MLP fc1 + fc2
    torch.manual_seed(0)
    fast = net(arch, out_indices=(0, 1)).eval().to(kernel_device)
    plain = net(arch, out_indices=(0, 1), fp32_gemm='ieee').eval().to(kernel_device)
    plain.load_state_dict(fast.state_dict())
    assert {m.fp32_gemm for m in plain.modules() if hasattr(m, 'fp32_gemm')} == {'ieee'}
    calls = []
    real_op = lin.linear_tf32x3

    def counting_op(*args):
        calls.append(args[1].shape)
        return real_op(*args)
    monkeypatch.setattr(lin, 'linear_tf32x3', counting_op)
    monkeypatch.setattr(lin, '_use_triton', lambda x, w, mode: mode == 'tf32x3')
    x = torch.randn(2, 3, 24, 20, device=kernel_device)
    with torch.no_grad():
        outs_fast, outs_plain = fast(x), plain(x)
    assert len(calls) == 2 * per_block
    for a, b in zip(outs_fast, outs_plain):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
    with pytest.raises(ValueError, match='fp32_gemm'):
        net(arch, out_indices=(0, 1), fp32_gemm='tf32')


def _grouped_inputs(device, strided):
    """x (2, 3, 5, G=4, K=6), contiguous or a slice of a wider last axis (as
    the SSM's dt rows of x_proj's output); weight (4, 7, 6)."""
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(2, 3, 5, 4, 9, generator=gen).to(device)
    x = wide[..., :6] if strided else wide[..., :6].contiguous()
    weight = torch.randn(4, 7, 6, generator=gen).to(device)
    return x, weight


def _bmm(x, weight, parts):
    """The op on the views ``grouped_linear`` passes: (G, M, K) rows and
    (G, K, n) weight slices; results back as (..., G, n)."""
    g, _, k = weight.shape
    outs = lin.grouped_linear_bmm(x.reshape(-1, g, k).transpose(0, 1),
                                  [w.transpose(1, 2) for w in weight.split(parts, dim=1)])
    for out, n in zip(outs, parts):      # stored as contiguous (M, G, n)
        assert out.shape == (g, x.numel() // (g * k), n) and out.stride() == (n, g * n, 1)
    return [o.transpose(0, 1).reshape(*x.shape[:-1], o.shape[-1]) for o in outs]


@pytest.mark.parametrize('strided', [False, True])
def test_grouped_linear_bmm_matches_einsum(kernel_device, strided):
    """The batched-GEMM op reads group-strided inputs in place and writes
    each part of N as a contiguous (M, G, n) tensor: equal to the einsum (and
    its split) in float64, including parts cut from the middle of a weight."""
    x, weight = _grouped_inputs(kernel_device, strided)
    want = torch.einsum('...gk,gnk->...gn', x.double(), weight.double())
    (whole,) = _bmm(x, weight, [7])
    first, second = _bmm(x, weight, [3, 4])
    for got, ref in [(whole, want), (first, want[..., :3]), (second, want[..., 3:])]:
        assert got.shape == ref.shape and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    (middle,) = _bmm(x, weight[:, 2:5], [3])
    torch.testing.assert_close(middle.double(), want[..., 2:5], rtol=1e-5, atol=1e-5)


def _group_major_strides(shape):
    """Strides of a (..., G, n) tensor stored as (G, ..., n)."""
    return torch.empty(shape[-2], *shape[:-2], shape[-1]).movedim(0, -2).stride()


@pytest.mark.parametrize('use_bmm', [False, True])
def test_grouped_linear_group_major(kernel_device, monkeypatch, use_bmm):
    """With ``group_major`` the result is stored (G, ..., n), each group's map
    contiguous, on both paths (the autograd one's batched GEMM and the
    inference op's, here forced), its split parts are views of it, and the
    values are the einsum's in float64, also from a strided input cut from
    such a result (the SSM's dt columns of x_proj's output)."""
    monkeypatch.setattr(lin, '_use_bmm', lambda x, w: use_bmm)
    x, weight = _grouped_inputs(kernel_device, strided=True)
    want = torch.einsum('...gk,gnk->...gn', x.double(), weight.double())
    y = lin.grouped_linear(x, weight, group_major=True)
    assert y.shape == want.shape and y.stride() == _group_major_strides(y.shape)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    first, second = lin.grouped_linear(x, weight, (3, 4), group_major=True)
    assert first.stride() == second.stride() == y.stride()
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
    torch.testing.assert_close(torch.cat([first, second], -1).double(), want, rtol=1e-5,
                               atol=1e-5)
    dts = y[..., :2]
    w_dt = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(2)).to(kernel_device)
    delta = lin.grouped_linear(dts, w_dt, group_major=True)
    assert delta.stride() == _group_major_strides(delta.shape)
    torch.testing.assert_close(
        delta.double(), torch.einsum('...gk,gnk->...gn', dts.double(), w_dt.double()),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('group_major', [False, True])
def test_grouped_linear_bmm_fake_strides(kernel_device, group_major):
    """The op's fake kernel gives the real outputs' strides (``opcheck``
    compares fake and real metadata, strides included), so ``torch.compile``
    plans the consumers of a group-major output for its real strides."""
    x, weight = _grouped_inputs(kernel_device, strided=True)
    rows, w_t = x.reshape(-1, 4, 6).transpose(0, 1), weight.transpose(1, 2)
    torch.library.opcheck(torch.ops.mmgroupmamba.grouped_linear_bmm,
                          (rows, [w_t, w_t[..., :3]], group_major))


def test_grouped_linear_dispatch_fake_kernel_and_flops(kernel_device, monkeypatch):
    """``grouped_linear`` takes the op when its rule says so (patched here:
    the rule itself needs CUDA), the einsum otherwise, with the same values;
    the op traces whole under torch.compile (its outputs' strides too) and
    counts 2*M*G*N*K FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    x, weight = _grouped_inputs(kernel_device, strided=True)
    plain = lin.grouped_linear(x, weight, (3, 4))
    calls = []
    real_op = lin.grouped_linear_bmm
    monkeypatch.setattr(lin, 'grouped_linear_bmm',
                        lambda a, ws: calls.append([w.shape[2] for w in ws]) or real_op(a, ws))
    monkeypatch.setattr(lin, '_use_bmm', lambda x, w: True)
    fast = lin.grouped_linear(x, weight, (3, 4))
    assert calls == [[3, 4]] and isinstance(fast, tuple) and len(fast) == 2
    for a, b in zip(fast, plain):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert lin.grouped_linear(x, weight).shape == (2, 3, 5, 4, 7)
    rows, w_t = x.reshape(-1, 4, 6).transpose(0, 1), weight.transpose(1, 2)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: real_op(t, [w_t])[0].transpose(0, 1) * 2,
                             backend='eager', fullgraph=True)
    got = compiled(rows)
    assert got.is_contiguous()
    torch.testing.assert_close(got, real_op(rows, [w_t])[0].transpose(0, 1) * 2)
    with FlopCounterMode(display=False) as counter:
        real_op(rows, [w_t, w_t[..., :2]])
    assert counter.get_total_flops() == 2 * (2 * 3 * 5 * 4) * (7 + 2) * 6


def test_grouped_linear_rule_and_errors():
    x, weight = _grouped_inputs('cpu', strided=False)
    assert not lin._use_bmm(x, weight)                                   # the CPU: einsum
    with pytest.raises(ValueError, match=r'weight: expected \(G, N, K\)'):
        lin.grouped_linear(x, weight[0])
    with pytest.raises(ValueError, match=r'x: expected \(\.\.\., G, K\) with G = 4, K = 6'):
        lin.grouped_linear(x[..., :5], weight)
    with pytest.raises(ValueError, match='sizes: expected positive parts summing to N = 7'):
        lin.grouped_linear(x, weight, (3, 3))
    if torch.cuda.is_available():
        xc, wc = x.cuda(), weight.cuda()
        assert lin._use_bmm(xc, wc) and not lin._use_bmm(xc.half(), wc.half())
        assert not lin._use_bmm(xc, wc.requires_grad_())                # training: einsum
        with torch.no_grad():
            assert lin._use_bmm(xc, wc)
            with torch.autocast('cuda', dtype=torch.float16):
                assert not lin._use_bmm(xc, wc)
