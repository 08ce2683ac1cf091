"""mmgroupmamba: GroupMamba / Spatial-Mamba backbones for OpenMMLab on one Triton selective-scan kernel.

The core (``mmgroupmamba.ops`` and the nn.Modules) needs only torch (+ triton on
Linux). The OpenMMLab stack is an extra; ``tools/install.sh`` builds it, since
mmcv 2.1.0 has no wheels for current torch.
"""
import os

from setuptools import find_packages, setup


def read_requirements(name: str) -> list:
    path = os.path.join(os.path.dirname(__file__), 'requirements', name)
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


def read_version() -> str:
    scope: dict = {}
    with open(os.path.join(os.path.dirname(__file__), 'mmgroupmamba', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmgroupmamba',
    version=read_version(),
    description='GroupMamba and Spatial-Mamba backbones for mmpretrain, mmdet and mmseg '
                'on one Triton selective-scan kernel',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmgroupmamba', 'mmgroupmamba.*']),
    python_requires='>=3.9',
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mm': read_requirements('mminstall.txt'),
        'tests': read_requirements('tests.txt'),
    },
    license='Apache-2.0',
)
