"""The PyTorch reference, the custom op (autograd, torch.compile, FLOPs) and
argument validation. CPU only, small sizes."""
import pytest
import torch
from scan_utils import make_inputs, rel_err

from mmgroupmamba.ops import (selective_scan, selective_scan_2d, selective_scan_flops,
                              selective_scan_ref)


def _loop64(u, delta, A, B, C, D, z, bias, softplus):
    """Sequential float64 recurrence, (batch, dim, L) layout, grouped B/C."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    per = dim // B.shape[1]
    dt = delta + (bias.double()[:, None] if bias is not None else 0)
    if softplus:
        dt = torch.nn.functional.softplus(dt)
    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        Bt = B[:, :, :, t].repeat_interleave(per, dim=1)
        Ct = C[:, :, :, t].repeat_interleave(per, dim=1)
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y, h


@pytest.mark.parametrize('length,n_state,groups', [(1, 1, 1), (31, 4, 2), (70, 16, 1)])
def test_reference_matches_float64_loop(length, n_state, groups):
    g = torch.Generator().manual_seed(length)
    batch, dim = 2, 4
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.rand(dim, n_state, generator=g) - 0.1
    B = torch.randn(batch, groups, n_state, length, generator=g)
    C = torch.randn(batch, groups, n_state, length, generator=g)
    D, z, bias = torch.randn(dim, generator=g), torch.randn(batch, dim, length, generator=g), \
        torch.randn(dim, generator=g)
    y, last = selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                                 delta_softplus=True, return_last_state=True)
    y64, last64 = _loop64(u, delta, A, B, C, D, z, bias, True)
    assert rel_err(y, y64) < 1e-5 and rel_err(last, last64) < 1e-5


def test_states_mode_reference_matches_loop_and_observation():
    """C=None returns the states h_t of the float64 loop; C h + D u of them
    gives the op's y; 1D and 2D shapes."""
    g = torch.Generator().manual_seed(3)
    batch, dim, n_state, length = 2, 4, 3, 19
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.rand(dim, n_state, generator=g) - 0.1
    B = torch.randn(batch, n_state, length, generator=g)
    C = torch.randn(batch, n_state, length, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    hs, last = selective_scan(u, delta, A, B, None, delta_bias=bias, delta_softplus=True,
                              return_last_state=True)
    assert hs.shape == (batch, dim, n_state, length) and hs.dtype == torch.float32
    _, last64 = _loop64(u, delta, A, B[:, None], C[:, None], None, None, bias, True)
    assert rel_err(last, last64) < 1e-5 and rel_err(hs[..., -1], last64) < 1e-5
    y = selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True)
    assert rel_err((hs * C[:, None]).sum(2) + D[:, None] * u, y) < 1e-5
    # 2D, channels-last: states (batch, H, W, dim, N)
    u2 = u[:, :, :18].reshape(batch, dim, 3, 6)
    d2 = delta[:, :, :18].reshape(batch, dim, 3, 6)
    B2 = B[:, None, :, :18].reshape(batch, 1, n_state, 3, 6)
    hs_first = selective_scan_2d(u2, d2, A, B2, None, ('tb',), delta_bias=bias)
    hs_last = selective_scan_2d(u2.permute(0, 2, 3, 1), d2.permute(0, 2, 3, 1), A,
                                B2.permute(0, 3, 4, 1, 2), None, ('tb',), delta_bias=bias,
                                channels_last=True)
    assert hs_first.shape == (batch, dim, n_state, 3, 6)
    assert torch.equal(hs_last, hs_first.permute(0, 3, 4, 1, 2))


def test_states_mode_gradcheck_float64():
    inp = make_inputs(1, 2, 1, 2, 2, 3, dtype=torch.float64, with_D=False, with_z=False)
    leaves = [inp[k].detach().double().requires_grad_(True)
              for k in ('u', 'delta', 'A', 'B', 'delta_bias')]

    def f(u, delta, A, B, bias):
        return selective_scan_2d(u, delta, A, B, None, ('rl',), delta_bias=bias,
                                 delta_softplus=True, backend='reference')
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


def test_states_mode_flops_and_errors():
    from torch.utils.flop_counter import FlopCounterMode
    inp = {k: (v.detach() if v is not None else None) for k, v in make_inputs(2, 8, 1, 1, 3, 4).items()}
    with FlopCounterMode(display=False) as counter:
        selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], None, ('lr',))
    assert counter.get_total_flops() == 7 * 2 * 12 * 8 * 1
    for kw in (dict(D=inp['D']), dict(z=inp['z'])):
        with pytest.raises(ValueError, match=r'^D, z: must be None when C is None'):
            selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], None, ('lr',), **kw)


def test_reference_gradcheck_float64():
    inp = make_inputs(1, 2, 1, 2, 2, 3, dtype=torch.float64)
    args = (inp['u'], inp['delta'], inp['A'].double(), inp['B'], inp['C'])
    extra = (inp['D'].double(), inp['z'], inp['delta_bias'].double())
    leaves = [t.detach().requires_grad_(True) for t in args + extra]

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan_2d(u, delta, A, B, C, ('bt',), D=D, z=z, delta_bias=bias,
                                 delta_softplus=True, backend='reference')
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


def test_op_last_state_gradient_reference():
    """Gradients through return_last_state agree with plain autograd of the reference."""
    inp = make_inputs(1, 2, 1, 2, 1, 5, dtype=torch.float64, with_z=False)
    leaves = [inp[k].detach().double().requires_grad_(True) for k in ('u', 'delta', 'A', 'B', 'C')]
    u, dt, A, B, C = leaves
    _, last = selective_scan(u[:, :, 0], dt[:, :, 0], A, B[:, 0, :, 0], C[:, 0, :, 0],
                             return_last_state=True, backend='reference')
    g_op = torch.autograd.grad(last.sum(), leaves[:4])  # C does not reach the state
    _, last_r = selective_scan_ref(u[:, :, 0], dt[:, :, 0], A, B[:, 0, :, 0], C[:, 0, :, 0],
                                   return_last_state=True)
    g_ref = torch.autograd.grad(last_r.sum(), leaves[:4])
    for a, b in zip(g_op, g_ref):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize('layout', ['contiguous', 'grouped'])
def test_torch_compile_fullgraph_cpu(layout):
    """The custom op traces without graph breaks (fake kernels, autograd),
    grouped maps (batch, G, dim / G, H, W) included."""
    inp = make_inputs(2, 8, 4, 1, 3, 4, layout=layout)

    def f(u, delta, A, B, C, D, z, bias):
        y = selective_scan_2d(u, delta, A, B, C, ('lr', 'tb', 'rl', 'bt'), D=D, z=z,
                              delta_bias=bias, delta_softplus=True)
        return (y * y).sum()
    args = [inp[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')]
    compiled = torch.compile(f, fullgraph=True, backend='aot_eager')
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, args)
    loss_e = f(*args)
    grads_e = torch.autograd.grad(loss_e, args)
    assert torch.allclose(loss, loss_e)
    for a, b in zip(grads, grads_e):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flop_count():
    from torch.utils.flop_counter import FlopCounterMode
    inp = make_inputs(2, 8, 4, 1, 3, 4)
    args = [inp[k].detach() for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')]
    with FlopCounterMode(display=False) as counter:
        selective_scan_2d(*args[:5], ('lr', 'tb', 'rl', 'bt'), D=args[5], z=args[6],
                          delta_bias=args[7])
    expected = selective_scan_flops(2, 8, 12, 1, with_D=True, with_z=True)
    assert expected == 9 * 2 * 12 * 8 + 2 * (2 * 8 * 12)
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize('mutate,match', [
    (lambda a: a.update(delta=a['delta'][:, :, :-1]), r'^delta: expected shape'),
    (lambda a: a.update(A=a['A'][:-1]), r'^A: expected shape'),
    (lambda a: a.update(B=a['B'][:, :, :, :-1]), r'^C: expected shape|^B: expected shape'),
    (lambda a: a.update(D=a['D'][:-1]), r'^D: expected shape'),
    (lambda a: a.update(z=a['z'].double()),
     r'^delta, z: expected float64 for all of u, delta, z or for none'),
    (lambda a: a.update(delta_bias=a['delta_bias'].to(torch.int64)), r'^delta_bias: expected a floating'),
    (lambda a: a.update(directions=('lr', 'up')), r'^directions: unknown direction'),
    (lambda a: a.update(directions=('lr',)), r'^directions: expected one direction per group'),
    (lambda a: a.update(u=a['u'][0]), r'^u: expected a \(batch, dim, H, W\)'),
    (lambda a: a.update(u=a['u'].reshape(1, 1, 4, 2, 3), delta=a['delta'].reshape(1, 1, 4, 2, 3)),
     r'^u: a grouped map \(batch, G, dim / G, H, W\) needs G = 2'),
])
def test_errors_name_the_argument(mutate, match):
    inp = {k: (v.detach() if v is not None else None) for k, v in make_inputs(1, 4, 2, 2, 2, 3).items()}
    inp['directions'] = ('lr', 'tb')
    mutate(inp)
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], inp['C'], inp['directions'],
                          D=inp['D'], z=inp['z'], delta_bias=inp['delta_bias'])


def test_grouped_maps_reference_and_errors():
    """Grouped maps (batch, G, dim / G, H, W) through the reference backend:
    the values and gradients of the (batch, dim, H, W) call, in the grouped
    shape; the states mode and a channels-last delta of another form are
    refused by name."""
    inp = make_inputs(1, 4, 2, 1, 2, 3, layout='grouped', with_z=False, dtype=torch.float64)
    kw = dict(D=inp['D'], delta_bias=inp['delta_bias'], delta_softplus=True, backend='reference')
    y = selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], inp['C'], ('lr', 'bt'), **kw)
    du, = torch.autograd.grad(y.pow(2).sum(), inp['u'])
    u4 = inp['u'].detach().flatten(1, 2).requires_grad_(True)
    y4 = selective_scan_2d(u4, inp['delta'].flatten(1, 2), inp['A'], inp['B'], inp['C'],
                           ('lr', 'bt'), **kw)
    du4, = torch.autograd.grad(y4.pow(2).sum(), u4)
    assert y.shape == inp['u'].shape and torch.allclose(y.flatten(1, 2), y4)
    assert du.shape == inp['u'].shape and torch.allclose(du.flatten(1, 2), du4)
    with pytest.raises(ValueError, match=r'^u: grouped maps .* need C'):
        selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], None, ('lr', 'bt'))
    cl = (lambda t: t.permute(0, 3, 4, 1, 2))
    with pytest.raises(ValueError, match=r'^delta: expected the shape of u \(1, 2, 3, 2, 2\)'):
        selective_scan_2d(cl(inp['u']), cl(inp['delta']).flatten(3), inp['A'], cl(inp['B']),
                          cl(inp['C']), ('lr', 'bt'), channels_last=True)


def test_backend_errors():
    inp = {k: v.detach() for k, v in make_inputs(1, 2, 1, 1, 2, 2, with_D=False, with_z=False,
                                                 with_bias=False).items() if v is not None}
    with pytest.raises(ValueError, match='^backend: expected one of'):
        selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], inp['C'], ('lr',),
                          backend='cuda')
