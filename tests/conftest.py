"""Shared pytest setup.

``--gpu`` runs the Triton kernel tests compiled on CUDA. Without it the
kernels run under Triton's CPU interpreter: ``TRITON_INTERPRET=1`` must be set
before triton is first imported (``triton.jit`` reads it when a kernel is
defined), so it is set here, before any test module is collected.
"""
import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption('--gpu', action='store_true', default=False,
                     help='run the Triton kernel tests compiled on CUDA instead of the interpreter')


def pytest_configure(config):
    if not config.getoption('--gpu'):
        os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture
def kernel_device(request) -> str:
    """'cuda' with ``--gpu`` (compiled kernels), else 'cpu' (interpreter)."""
    if request.config.getoption('--gpu'):
        if not torch.cuda.is_available():
            pytest.skip('--gpu given but CUDA is not available')
        return 'cuda'
    return 'cpu'
