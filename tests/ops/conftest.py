"""Fixtures of the selective-scan tests: where the Triton kernels run."""
import pytest


@pytest.fixture
def scan_override():
    """Set triton_scan.CONFIG_OVERRIDE for one test, restored afterwards."""
    from mmgroupmamba.ops import triton_scan
    saved = dict(triton_scan.CONFIG_OVERRIDE)

    def set_(**kw):
        triton_scan.CONFIG_OVERRIDE.clear()
        triton_scan.CONFIG_OVERRIDE.update(kw)
    yield set_
    triton_scan.CONFIG_OVERRIDE.clear()
    triton_scan.CONFIG_OVERRIDE.update(saved)
