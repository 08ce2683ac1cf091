"""Data-parallel training of GroupMamba on n GPUs: throughput and loss (issue 3's scaling figure).

    torchrun --nproc_per_node=N tools/benchmark_ddp.py [--model groupmamba_tiny] [--batch 128]
             [--steps 30] [--warmup 5] [--with-cp 1 0 0 0]

Each process trains the classifier under ``DistributedDataParallel`` (NCCL),
``--batch`` images per GPU, fp16 autocast + GradScaler, AdamW with the
configs' linear scaling rule (lr 1e-3 per 1024 images, weight decay 0.05).
The data is a synthetic, learnable task drawn on the GPU: 10 classes, each
image is Gaussian noise plus a fixed random pattern of its class (the same
patterns on every rank, different samples per rank), so the loss must fall
within a few dozen steps. Rank 0 prints the loss averaged over the ranks
every few steps and the images per second of all ranks over the timed steps
(CUDA events between barriers, after ``--warmup`` steps). Run it with 1 and
with N processes: scaling = img/s(N) / img/s(1).
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import mmgroupmamba
from benchmark_model import train_step, with_cp_flags  # tools/ is the script's folder

NUM_CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='groupmamba_tiny')
    parser.add_argument('--batch', type=int, default=128, help='images per GPU')
    parser.add_argument('--steps', type=int, default=30, help='timed steps')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--with-cp', nargs='+', default=['1', '0', '0', '0'], metavar='0|1')
    args = parser.parse_args()
    if not torch.cuda.is_available() or 'LOCAL_RANK' not in os.environ:
        sys.exit('benchmark_ddp.py needs CUDA GPUs and torchrun')
    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    dist.init_process_group('nccl')
    torch.manual_seed(0)   # the same initial weights and class patterns on every rank
    model = mmgroupmamba.create_model(args.model, num_classes=NUM_CLASSES,
                                      with_cp=with_cp_flags(args.with_cp)).cuda()
    patterns = torch.randn(NUM_CLASSES, 3, 224, 224, device='cuda')
    model = DistributedDataParallel(model)
    lr = 1e-3 * args.batch * world / 1024
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scaler = torch.amp.GradScaler('cuda')
    gen = torch.Generator(device='cuda').manual_seed(1000 + rank)

    def step() -> torch.Tensor:
        y = torch.randint(0, NUM_CLASSES, (args.batch,), device='cuda', generator=gen)
        x = torch.randn(args.batch, 3, 224, 224, device='cuda', generator=gen) + patterns[y]
        return train_step(model, opt, scaler, x, y)

    def mean_loss(loss: torch.Tensor) -> float:
        dist.all_reduce(loss)
        return loss.item() / world

    t0 = time.perf_counter()
    losses = [mean_loss(step())]
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    timed = [step() for _ in range(args.steps)]
    end.record()
    torch.cuda.synchronize()
    dist.barrier()
    sec = start.elapsed_time(end) / 1000 / args.steps
    losses += [mean_loss(v) for v in timed[::5]]
    if rank == 0:
        print(f'# {torch.cuda.get_device_name()} x {world} | torch {torch.__version__} | '
              f'{args.model}, {args.batch} img/GPU, with_cp={with_cp_flags(args.with_cp)}, '
              f'lr {lr:g}')
        print(f'loss (mean over ranks) at steps 0, {args.warmup}, +5, ...: '
              + ' '.join(f'{v:.3f}' for v in losses))
        print(f'| {args.model} | {world} GPU | {args.batch * world / sec:.0f} img/s | '
              f'{sec * 1e3:.1f} ms/step | peak {torch.cuda.max_memory_allocated() / 2**30:.1f} '
              f'GiB/GPU | first step {first_s:.1f} s |', flush=True)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
