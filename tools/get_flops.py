"""Parameters and FLOPs of GroupMamba or Spatial-Mamba T/S/B (or the dense
backbone), or of a whole detector / segmentor config.

    python tools/get_flops.py [--family groupmamba|spatialmamba]
                              [--variants tiny small base] [--shape H W]
                              [--backbone] [--device meta|cpu|cuda]
    python tools/get_flops.py --config CFG [CFG ...] --shape 800 1280

With ``--config`` (mmdet / mmseg configs; needs that library) the model of
each config is built and one tensor-mode forward is counted, as the
libraries' own get_flops tools do: for Mask R-CNN backbone + FPN + RPN +
RoI box/mask heads on the RPN's proposals (test_cfg), for UperNet backbone +
decode head (the auxiliary head is training-only). It runs for real on the
CPU (``--device cpu``, the default there) since NMS cannot run on meta
tensors; expect a minute per config at 1280x800.

Counting, per model, one forward of a (1, 3, H, W) image (default 224x224):

* ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls (Linear,
  einsum/bmm: the grouped SSM projections), convolutions, and the selective
  scan through the FLOP formula the scan op registers (fvcore/VMamba
  convention ``9*B*L*D*N + B*D*L`` for the D skip; that formula is already a
  multiply-accumulate count, like fvcore's). FlopCounterMode reports 2 FLOPs
  per multiply-accumulate for matmul/conv, so their MACs are FLOPs / 2.
* Not counted by FlopCounterMode: LayerNorm, BatchNorm, activations, softplus
  / exp, element-wise products and sums, pooling. fvcore (which published
  GFLOPs usually mean, as MACs) counts LayerNorm as 5 and eval BatchNorm as 2
  per element; this tool adds those by module hooks in the "norms" column.

Columns: ``MACs mm/conv`` = FlopCounterMode matmul+conv FLOPs / 2; ``scan`` =
the scan op's registered count; ``norms`` = fvcore-style LN/BN count;
``fvcore-style`` = their sum, comparable to the paper's 4.5 / 7.0 / 14
"GFLOPs" (an analytic count of every op of the official code in that
convention gives 4.70 / 7.28 / 14.19 G). Spatial-Mamba's published
4.5 / 7.1 / 15.8 G come from fvcore on a *training-mode* copy (BatchNorm 5
per element; its states-only scan charged ``7*B*L*D*N``), which an analytic
count puts at 4.468 / 7.117 / 15.801 G; this tool counts eval-mode BatchNorm.

``--device meta`` (default) counts from shapes only, without computing.
"""
import argparse
import os
import sys

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

try:
    import mmgroupmamba  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from mmgroupmamba.models import GroupMamba, SpatialMamba, create_model  # noqa: E402

PAPER = {'groupmamba': {'tiny': (23, 4.5), 'small': (34, 7.0), 'base': (57, 14.0)},
         'spatialmamba': {'tiny': (27, 4.5), 'small': (43, 7.1), 'base': (96, 15.8)}}
BACKBONES = {'groupmamba': GroupMamba, 'spatialmamba': SpatialMamba}


def _scan_ops():
    """The scan's custom-op overloads, if the op library registers them."""
    ops = set()
    ns = getattr(torch.ops, 'mmgroupmamba', None)
    for name in ('selective_scan_2d_fwd', 'selective_scan_2d_bwd'):
        op = getattr(ns, name, None) if ns is not None else None
        if op is not None:
            ops.add(op)
            ops.update(getattr(op, ov) for ov in op.overloads())
    return ops


def count(model: nn.Module, shape, device: str, forward=None) -> dict:
    """Params and the FLOP columns for one forward of a (1, 3, H, W) input
    (``forward(model, x)`` if given, else ``model(x)``)."""
    norms = [0]

    def hook(m, inp, out):
        numel = inp[0].numel()
        norms[0] += numel * (5 if isinstance(m, nn.LayerNorm) else 2)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))]
    x = torch.randn(1, 3, *shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        forward(model, x) if forward is not None else model(x)
    for h in handles:
        h.remove()
    scan_ops = _scan_ops()
    scan = mm = 0
    for op, n in counter.get_flop_counts().get('Global', {}).items():
        if op in scan_ops or 'selective_scan' in str(op):
            scan += n
        else:
            mm += n
    params = sum(p.numel() for p in model.parameters())
    return dict(params=params, total_flops=counter.get_total_flops(), macs_mm=mm / 2, scan=scan,
                norms=norms[0], fvcore=mm / 2 + scan + norms[0])


def build_from_config(path: str, device: str):
    """The model of an mmdet / mmseg config, in eval mode, and its forward."""
    import importlib

    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise SystemExit(f'--config: {path} has default_scope={scope!r}; expected mmdet or mmseg')
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg.model.backbone.pop('init_cfg', None)  # count the architecture, load nothing
    model = registry.build(cfg.model).to(device).eval()
    if scope == 'mmseg':
        return model, lambda m, x: m._forward(x)
    from mmdet.structures import DetDataSample

    def forward(m, x):
        h, w = x.shape[-2:]
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                    batch_input_shape=(h, w), scale_factor=(1.0, 1.0))
        return m._forward(x, [DetDataSample(metainfo=meta)])

    return model, forward


def main_config(args) -> None:
    device = 'cpu' if args.device == 'meta' else args.device
    print(f'input 1x3x{args.shape[0]}x{args.shape[1]}, device {device}')
    for path in args.config:
        model, forward = build_from_config(path, device)
        r = count(model, args.shape, device, forward)
        backbone = sum(p.numel() for p in model.backbone.parameters())
        print(f"{os.path.basename(path)}: params {r['params'] / 1e6:.2f}M (backbone "
              f"{backbone / 1e6:.2f}M), FLOPs fvcore-style {r['fvcore'] / 1e9:.1f}G "
              f"(MACs mm/conv {r['macs_mm'] / 1e9:.1f}G, scan {r['scan'] / 1e9:.2f}G, "
              f"norms {r['norms'] / 1e9:.2f}G; FlopCounterMode total {r['total_flops'] / 1e9:.1f}G)",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--family', default='groupmamba', choices=sorted(BACKBONES))
    parser.add_argument('--variants', nargs='+', default=['tiny', 'small', 'base'],
                        choices=['tiny', 'small', 'base'])
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--backbone', action='store_true',
                        help='the dense backbone (4 outputs, output norms) instead of the '
                             'classifier')
    parser.add_argument('--device', default='meta', help="'meta' (shapes only), 'cpu', 'cuda'")
    parser.add_argument('--config', nargs='+',
                        help='count whole mmdet/mmseg models of these configs instead')
    args = parser.parse_args(argv)
    if args.config:  # importing mmgroupmamba (above) registered the backbone
        return main_config(args)

    what = 'backbone (out_indices 0-3)' if args.backbone else 'classifier (1000 classes)'
    print(f'{args.family} {what}, input 1x3x{args.shape[0]}x{args.shape[1]}, device {args.device}')
    header = (f"{'variant':<8}{'params':>13}{'FlopCounter':>13}{'MACs mm/conv':>14}"
              f"{'scan':>8}{'norms':>8}{'fvcore-style':>14}{'paper':>12}")
    print(header)
    print('-' * len(header))
    for v in args.variants:
        with torch.device(args.device):
            model = (BACKBONES[args.family](v) if args.backbone
                     else create_model(f'{args.family}_{v}'))
        model.eval()
        r = count(model, args.shape, args.device)
        paper = ('' if args.backbone or tuple(args.shape) != (224, 224)
                 else '{}M/{}G'.format(*PAPER[args.family][v]))
        g = 1e9
        print(f"{v:<8}{r['params']:>13,}{r['total_flops'] / g:>12.3f}G{r['macs_mm'] / g:>13.3f}G"
              f"{r['scan'] / g:>7.3f}G{r['norms'] / g:>7.3f}G{r['fvcore'] / g:>13.3f}G{paper:>12}")
    print('FlopCounter = FlopCounterMode total (2 per MAC for matmul/conv, + the scan formula). '
          'MACs mm/conv = matmul/einsum/conv MACs. scan = the registered scan count '
          '(fvcore convention). norms = LayerNorm 5/elt + eval BatchNorm 2/elt (fvcore). '
          'Not counted anywhere: activations, softplus/exp, element-wise gates, residual adds, '
          'pooling.')
    if not _scan_ops():
        print('note: no FLOP formula registered for the scan op; the scan column is 0.')


if __name__ == '__main__':
    main()
