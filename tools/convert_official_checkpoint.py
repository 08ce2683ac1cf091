"""Convert an official GroupMamba checkpoint (github.com/Amshaker/GroupMamba)
into mmgroupmamba's key names, verify it, and save it.

    python tools/convert_official_checkpoint.py SRC DST [--variant tiny|small|base]
           [--backbone-only]

SRC may be the released flat state dict or a training checkpoint with a
``model`` / ``model_ema`` entry; it is read with the allow-listed safe loader
(no arbitrary unpickling). The four per-group SS2D tensors of every layer are
fused as documented in ``mmgroupmamba.models.groupmamba.convert_official_state_dict``.
The converted weights are loaded strictly into a freshly built model before
saving. DST holds ``{'state_dict': ..., 'meta': ...}`` (mmengine layout), with
keys ``backbone.* / neck.* / head.*`` (the mmpretrain ImageClassifier names),
or, with ``--backbone-only``, the ``backbone.*`` keys alone (for detection /
segmentation ``init_cfg=dict(type='Pretrained', checkpoint=DST)``).
"""
import argparse
import os
import sys

import torch

try:
    import mmgroupmamba  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from mmgroupmamba.models.groupmamba import (GroupMamba, GroupMambaClassifier,  # noqa: E402
                                            arch_settings,
                                            convert_official_state_dict, is_official_state_dict)
from mmgroupmamba.utils.checkpoint import extract_state_dict, safe_load  # noqa: E402


def infer_arch(sd):
    """The architecture dict of an official state dict, from its shapes."""
    dims, depths, ratios = [], [], []
    s = 1
    while f'patch_embed{s}.proj.weight' in sd:
        dim = sd[f'patch_embed{s}.proj.weight'].shape[0]
        dims.append(dim)
        depths.append(len({k.split('.')[1] for k in sd if k.startswith(f'block{s}.')}))
        ratios.append(sd[f'block{s}.0.mlp.fc1.weight'].shape[0] / dim)
        s += 1
    ratios = [int(r) if float(r).is_integer() else r for r in ratios]
    return dict(stem_channels=sd['patch_embed1.conv.0.weight'].shape[0], embed_dims=tuple(dims),
                depths=tuple(depths), mlp_ratios=tuple(ratios))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output path')
    parser.add_argument('--variant', choices=sorted(arch_settings),
                        help='expected variant; checked against the shapes (inferred if omitted)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='keep only the backbone.* keys (dense-task initialisation)')
    args = parser.parse_args(argv)

    sd = extract_state_dict(safe_load(args.src, map_location='cpu'))
    if not is_official_state_dict(sd):
        sys.exit(f'{args.src}: not an official GroupMamba state dict (no patch_embed1.* / '
                 f'block1.* keys); first keys: {list(sd)[:5]}')
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    arch = infer_arch(sd)
    variant = next((n for n, a in arch_settings.items() if dict(a) == arch), None)
    if args.variant and variant != args.variant:
        sys.exit(f'{args.src}: --variant {args.variant} but the weights have the architecture '
                 f'{arch} ({variant or "no named variant"})')
    converted = convert_official_state_dict(sd)
    num_classes = converted['head.fc.weight'].shape[0] if 'head.fc.weight' in converted else None
    if num_classes is None:
        if not args.backbone_only:
            sys.exit(f'{args.src}: no classification head in the checkpoint; use --backbone-only')
    else:
        model = GroupMambaClassifier(variant or arch, num_classes=num_classes,
                                     distillation='head.dist_fc.weight' in converted)
        model.load_state_dict(converted, strict=True)  # raises with the key lists on mismatch
    if args.backbone_only:
        converted = {k: v for k, v in converted.items() if k.startswith('backbone.')}
        # every backbone key present (the new last-stage output norm excepted)
        GroupMamba(variant or arch).load_pretrained(converted)
    n_params = sum(v.numel() for k, v in converted.items()
                   if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    meta = dict(source=os.path.basename(args.src), arch=variant or arch,
                converted_by='tools/convert_official_checkpoint.py',
                num_classes=num_classes, backbone_only=args.backbone_only)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save({'state_dict': converted, 'meta': meta}, args.dst)
    print(f'{args.src} -> {args.dst}: GroupMamba-{variant or "custom"} {arch}, '
          f'{len(converted)} tensors, {n_params:,} parameters'
          + ', load verified')


if __name__ == '__main__':
    main()
