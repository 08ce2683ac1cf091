"""How the package's custom ops are called (mmgroupmamba.ops.dispatch):
their bodies directly in plain eager calls without gradients, the ops
wherever something must see them."""
import torch
from scan_utils import PassThroughMode
from torch.utils.flop_counter import FlopCounterMode

from mmgroupmamba.ops.dispatch import op_or_body, plain_eager


def _spied():
    calls = []

    def body(x, ws=(), scale=1.0):
        calls.append('body')
        return x * scale

    def op(x, ws=(), scale=1.0):
        calls.append('op')
        return x * scale
    return op_or_body(op, body), calls


def test_body_in_plain_eager_calls_op_otherwise():
    fn, calls = _spied()
    x, w = torch.ones(3), torch.ones(2, requires_grad=True)
    assert plain_eager()
    fn(x, [x], scale=2.0)
    with torch.no_grad():
        fn(x, [w])                        # requires grad, but no gradient is recorded
    fn(x, ws=[x, w])                      # a tensor in a list needs a gradient: the op
    fn(w)
    with FlopCounterMode(display=False):  # a dispatch mode
        assert not plain_eager()
        fn(x)
    with PassThroughMode():                  # a function mode
        fn(x)
    torch.compile(lambda t: fn(t) + 1, backend='eager', fullgraph=True)(x)
    torch.fx.symbolic_trace(lambda t: fn(t) + 1)   # fx records the op, not its body
    assert calls == ['body', 'body', 'op', 'op', 'op', 'op', 'op', 'op']
    assert fn.__name__ == 'body'
