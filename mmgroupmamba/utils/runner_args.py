"""Command-line plumbing shared by ``tools/train.py`` and ``tools/test.py``
(needs mmengine; not imported by the torch-only core)."""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction


def add_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and the
    ``--local-rank`` that torch.distributed.launch (used by mim) passes."""
    parser.add_argument('--work-dir', help='the dir for logs, checkpoints and metrics')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with ``--cfg-options``, the launcher and
    the work dir (default ``./work_dirs/<config name>``) applied; exports
    ``LOCAL_RANK`` for launchers that pass it as an argument."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.launcher == 'pytorch':
        setup_cpu_distributed(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def setup_cpu_distributed(cfg: Config) -> None:
    """Without CUDA, let ``--launcher pytorch`` (torchrun, tools/dist_*.sh) run
    on CPU processes: mmengine's launcher calls ``torch.cuda.set_device`` and
    wraps the model with ``device_ids=[local_rank]``, both GPU-only. Here the
    process group is created with gloo first (mmengine then skips its own
    init) and DDP gets ``device_ids=None``. With CUDA nothing changes.
    For debugging and CI of the multi-process path; not a way to train fast."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
