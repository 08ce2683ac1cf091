"""Where training memory goes: the bytes autograd saves for the backward,
per module kind, counted on any device (CPU works).

    python tools/activation_memory.py [--models groupmamba_tiny ...] [--batch 2] [--size 224]
                                      [--amp] [--with-cp 1 [0 0 0]] [--scale-to 128]

One training forward (fp32, or autocast with ``--amp``: fp16 on CUDA, bf16 on
the CPU, both 2 bytes) under ``torch.autograd.graph.saved_tensors_hooks``:
every tensor saved for the backward is counted once (by storage), charged to
the innermost module running when it was saved (its class name). Bytes are
device-independent, so a CPU run estimates a GPU run's activation memory;
``--scale-to`` multiplies by ``scale_to / batch`` for the benchmark's batch.
The peak a GPU reports is higher: it adds parameters, gradients, optimizer
state and the backward's transient buffers.
"""
import argparse
from collections import defaultdict
from typing import Dict

import torch
import torch.nn.functional as F

import mmgroupmamba
from benchmark_model import with_cp_flags


def saved_bytes_by_module(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> Dict[str, int]:
    stack = ['(top)']
    seen = set()
    by_kind: Dict[str, int] = defaultdict(int)

    def pre(module, args):
        stack.append(type(module).__name__)

    def post(module, args, out):
        stack.pop()

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. no storage
            return t
        if key not in seen and key[1] > 0:
            seen.add(key)
            by_kind[stack[-1]] += key[1]
        return t

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    dtype = torch.float16 if x.is_cuda else torch.bfloat16
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            out = model(x)
            heads = out if isinstance(out, tuple) else (out, )
            target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            loss = sum(F.cross_entropy(h, target) for h in heads) / len(heads)
    finally:
        for h in handles:
            h.remove()
    loss.backward()
    return dict(by_kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['groupmamba_tiny'])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--with-cp', nargs='+', default=['0'], metavar='0|1',
                        help='activation checkpointing: one flag for all stages or one per stage')
    parser.add_argument('--scale-to', type=int, default=128)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    scale = args.scale_to / args.batch
    for name in args.models:
        torch.manual_seed(0)
        kwargs = dict(distillation=True) if name.startswith('groupmamba') else {}
        with_cp = with_cp_flags(args.with_cp)
        model = mmgroupmamba.create_model(name, with_cp=with_cp, **kwargs).to(args.device)
        model.train()
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device,
                        requires_grad=bool(with_cp))  # checkpointing needs a grad path
        by_kind = saved_bytes_by_module(model, x, args.amp)
        total = sum(by_kind.values())
        mode = ('AMP' if args.amp else 'fp32') + (f', with_cp={with_cp}' if with_cp else '')
        print(f"\n{name} ({mode}): "
              f'{total / args.batch / 2**20:.1f} MiB saved per image, '
              f'{total * scale / 2**30:.2f} GiB at batch {args.scale_to}')
        print('| module kind | GiB at batch %d | share |\n|---|---|---|' % args.scale_to)
        for kind, n in sorted(by_kind.items(), key=lambda kv: -kv[1])[:12]:
            print(f'| {kind} | {n * scale / 2**30:.2f} | {n / total:.0%} |')


if __name__ == '__main__':
    main()
