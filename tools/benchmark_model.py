"""Throughput and peak memory of GroupMamba / Spatial-Mamba T/S/B on a GPU (the issue's protocol).

    python tools/benchmark_model.py [--models groupmamba_tiny spatialmamba_tiny ...] [--batch 128] [--size 224]
           [--modes infer_fp32 infer_amp train_amp] [--compile] [--with-cp 1 0 0 0]
           [--compile-mode default|reduce-overhead|max-autotune-no-cudagraphs]
           [--fp32-gemm tf32x3|ieee] [--json OUT]

Per model and mode: images/s over ``--iters`` timed steps after ``--warmup``
steps (CUDA events, synchronised), and the peak allocated GPU memory of that
mode (``torch.cuda.max_memory_allocated`` after a reset). Training is one
AdamW step with the cross-entropy of the head (GroupMamba: averaged with the
dist head's; the distillation teacher / MESA EMA model is not part of the
student's cost and is left out, as in the anchor).
AMP is fp16 autocast with a GradScaler, as the official training.
``--with-cp`` turns on activation checkpointing (the backbone's ``with_cp``):
one flag for all stages or one per stage. ``--fp32-gemm`` picks the float32
GEMM algorithm (default 'tf32x3', see ``mmgroupmamba.ops.linear``; 'ieee' is
PyTorch's SIMT fp32 GEMM): it matters for ``infer_fp32`` only, autocast GEMMs
are fp16. ``--compile-mode`` is ``torch.compile``'s ``mode``: 'reduce-overhead'
replays each step from a CUDA graph (fixed shapes), which removes the
launch gaps between kernels.
"""
import argparse
import json
import sys
import time
from typing import Callable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

import mmgroupmamba


def _timed(step, warmup: int, iters: int) -> float:
    """Mean seconds per call of ``step``."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def with_cp_flags(values: Sequence[int]) -> Union[bool, Tuple[bool, ...]]:
    """``--with-cp`` values (0/1): one for all stages, or one per stage."""
    flags = tuple(bool(int(v)) for v in values)
    return flags[0] if len(flags) == 1 else flags


def build(name: str, compile_model: bool, with_cp: Union[bool, Tuple[bool, ...]] = False,
          fp32_gemm: str = 'tf32x3', compile_mode: str = 'default'):
    """(eager model, the model to run: compiled or the same), on the GPU, seeded."""
    torch.manual_seed(0)
    kwargs = dict(distillation=True) if name.startswith('groupmamba') else {}
    eager = mmgroupmamba.create_model(name, num_classes=1000, with_cp=with_cp,
                                      fp32_gemm=fp32_gemm, **kwargs).cuda()
    return eager, (torch.compile(eager, mode=compile_mode) if compile_model else eager)


def make_step(model: torch.nn.Module, mode: str, x: torch.Tensor) -> Callable[[], None]:
    """One step of ``mode``: inference (fp32 or fp16 autocast) or an AdamW
    training step on the heads' mean cross-entropy (fp16 autocast + GradScaler)."""
    amp = mode.endswith('amp')
    if mode.startswith('infer'):
        model.eval()

        @torch.inference_mode()
        def step():
            with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
                model(x)
        return step
    model.train()
    target = torch.randint(0, 1000, (x.shape[0], ), device=x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler('cuda')

    def step():
        train_step(model, opt, scaler, x, target, amp)
    return step


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, target: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """One optimiser step on the heads' mean cross-entropy (fp16 autocast and
    the GradScaler when ``amp``); returns the loss, detached."""
    with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
        out = model(x)
        heads = out if isinstance(out, tuple) else (out, )
        loss = sum(F.cross_entropy(h, target) for h in heads) / len(heads)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def _logits(out) -> torch.Tensor:
    return torch.cat([o.float() for o in (out if isinstance(out, tuple) else (out, ))])


def bench(name: str, mode: str, batch: int, size: int, warmup: int, iters: int,
          compile_model: bool, with_cp: Union[bool, Tuple[bool, ...]] = False,
          fp32_gemm: str = 'tf32x3', compile_mode: str = 'default') -> dict:
    eager, model = build(name, compile_model, with_cp, fp32_gemm, compile_mode)
    x = torch.randn(batch, 3, size, size, device='cuda')
    check = None
    if compile_model and mode.startswith('infer'):
        # the compiled model must compute the eager model's function
        eager.eval()
        with torch.inference_mode(), torch.autocast('cuda', dtype=torch.float16,
                                                    enabled=mode == 'infer_amp'):
            want, got = _logits(eager(x)), _logits(model(x))  # the benchmark shape
        check = ((got - want).norm() / want.norm()).item()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = make_step(model, mode, x)
    t0 = time.perf_counter()
    step()  # the first step includes torch.compile's compilation
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    sec = _timed(step, warmup, iters)
    return dict(model=name, mode=mode, batch=batch, size=size, compiled=compile_model,
                compile_mode=compile_mode if compile_model else None,
                with_cp=with_cp,
                img_per_s=batch / sec, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                first_step_s=first, rel_err_vs_eager=check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+',
                        default=['groupmamba_tiny', 'groupmamba_small', 'groupmamba_base'])
    parser.add_argument('--modes', nargs='+', default=['infer_fp32', 'infer_amp', 'train_amp'])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--compile-mode', default='default',
                        choices=['default', 'reduce-overhead', 'max-autotune-no-cudagraphs'],
                        help="torch.compile's mode ('reduce-overhead': CUDA graphs)")
    parser.add_argument('--with-cp', nargs='+', default=['0'], metavar='0|1',
                        help='activation checkpointing: one flag for all stages or one per stage')
    parser.add_argument('--fp32-gemm', default='tf32x3', choices=['tf32x3', 'ieee'],
                        help="float32 GEMM algorithm of the backbone's Linear layers")
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_model.py needs a CUDA GPU')
    print(f'# {torch.cuda.get_device_name()} | torch {torch.__version__} | '
          f'triton {getattr(__import__("triton"), "__version__", "?")}', flush=True)
    rows = []
    print('| model | mode | batch | img/s | peak GiB | first step s | rel. error vs eager |')
    print('|---|---|---|---|---|---|---|')
    for name in args.models:
        for mode in args.modes:
            row = bench(name, mode, args.batch, args.size, args.warmup, args.iters, args.compile,
                        with_cp_flags(args.with_cp), args.fp32_gemm, args.compile_mode)
            rows.append(row)
            err = row['rel_err_vs_eager']
            err = '–' if err is None else f'{err:.1e}'
            cp = f", with_cp={row['with_cp']}" if row['with_cp'] else ''
            if mode == 'infer_fp32':
                cp += f', fp32_gemm={args.fp32_gemm}'
            how = ''
            if args.compile:
                how = (' (compiled)' if args.compile_mode == 'default'
                       else f' (compiled, {args.compile_mode})')
            print(f"| {name} | {mode}{how}{cp} | {args.batch} | "
                  f"{row['img_per_s']:.0f} | {row['peak_gib']:.1f} | {row['first_step_s']:.1f} | "
                  f'{err} |', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
