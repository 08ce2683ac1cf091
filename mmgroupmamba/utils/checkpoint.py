"""Safe checkpoint loading: ``torch.load(weights_only=True)`` with an allow-list.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and
mmengine 0.10.7 calls it without saying otherwise, so mmengine cannot load its
own checkpoints any more (their ``message_hub`` pickles
``mmengine.logging.HistoryBuffer`` holding numpy arrays). Turning unrestricted
unpickling back on would let any downloaded file run code. Instead we keep the
restricted unpickler and allow exactly the globals these checkpoints need:

* numpy arrays, dtypes and scalars (under both numpy 1 and numpy 2 paths),
* mmengine's ``HistoryBuffer`` (only when mmengine is installed), and the
  ``getattr(HistoryBuffer, 'min'|'max'|...)`` its pickled statistics methods
  need -- through a ``getattr`` stand-in that allows exactly those lookups,
* yacs' ``CfgNode``, which the official GroupMamba release pickles beside its
  weights. It is read as a ``collections.OrderedDict`` (the only dict type the
  restricted unpickler may fill and set attributes on), so the weights load
  without yacs installed and nothing of yacs is executed.

Anything else is refused with :class:`UnsafeCheckpointError`, naming the
global and the file.
"""
import pickle
from collections import OrderedDict
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list."""


def _numpy_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    from numpy._core import multiarray  # numpy >= 2

    allowed: List[Union[Callable, Tuple[Callable, str]]] = [
        np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
        # Checkpoints written under numpy 1 name the same functions by their old module.
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),
    ]
    # numpy 2 pickles dtypes through their classes (numpy.dtypes.Float64DType, ...).
    allowed += [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)]
    return allowed


def _history_buffer_getattr(history_buffer_cls: type):
    """A ``getattr`` for the unpickler that only resolves HistoryBuffer's
    statistics methods (what mmengine pickles in ``_statistics_methods``)."""

    def restricted_getattr(obj, name):
        if obj is history_buffer_cls and name in ('min', 'max', 'current', 'mean'):
            return getattr(obj, name)
        raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not in the allow-list')

    return restricted_getattr


def _allowed_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    allowed = _numpy_globals()
    allowed.append((OrderedDict, 'yacs.config.CfgNode'))
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # the core works with torch alone
        pass
    else:
        restricted = _history_buffer_getattr(HistoryBuffer)
        allowed += [HistoryBuffer, (restricted, '__builtin__.getattr'),
                    (restricted, 'builtins.getattr')]
    return allowed


def safe_load(path: Any, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint with the restricted unpickler and our allow-list.

    Args:
        path: a file path or file-like object, as for ``torch.load``.
        map_location: as for ``torch.load``.
    Raises:
        UnsafeCheckpointError: the file needs a global that is not allowed.
    """
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message is long; keep the line that says what was refused.
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = next((ln for ln in lines if any(key in ln for key in (
                'GLOBAL', 'Unsupported', 'unrecognized', 'Can only', 'allow-list'))),
                lines[0] if lines else '')
            raise UnsafeCheckpointError(
                f'Refusing to load checkpoint {path!r}: it contains objects outside '
                f"mmgroupmamba's allow-list (numpy arrays/scalars, mmengine HistoryBuffer, "
                f'yacs CfgNode), so loading it could run arbitrary code. torch said: '
                f'{reason} If you trust the file, convert it yourself with '
                f'torch.load(path, weights_only=False) and save only its state dict.') from err


def extract_state_dict(checkpoint: Any) -> dict:
    """The weights of a loaded checkpoint: a flat state dict, or the entry
    ``state_dict`` (mmengine), ``model`` or ``model_ema`` (official releases)."""
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model', 'model_ema'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise ValueError('checkpoint: expected a state dict (name -> tensor) or a dict with a '
                     f"'state_dict', 'model' or 'model_ema' entry, got keys "
                     f'{list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)}')
