"""Check and time the scan kernels as another Triton version compiles them, on
a GPU whose Python has a different Triton.

The GPU image's Triton is not every user's: torch 2.14.1 brings triton 3.8,
and a Triton release can change the kernels' code (docs/benchmarks.md,
"Triton 3.7 and later"). A wheel of another Triton (200 MB) is too large to
carry to the GPU machine, but what it compiles is not:

- ``build`` (any machine, no GPU) compiles the main pass's forward and
  backward kernels of a case for an H100 (sm_90) through
  ``tools/scan_sass.py``. It saves each kernel's cubin with a manifest of
  what a launch needs: the parameters that Triton's specialisation left (in
  order, tuples flattened), the constexprs it baked in, warps, shared memory
  and the trailing scratch pointers. It also checks that the arguments the
  host passed flatten to exactly the cubin's parameters.
- ``run`` (GPU) runs the case's forward and backward through those cubins,
  launched with the CUDA driver API (``cuModuleLoadData``,
  ``cuLaunchKernel``) in place of the installed Triton's kernels. It prints
  their device times (CUDA graphs, as ``tools/benchmark_scan.py``), the
  installed Triton's for the same calls, and the largest relative
  difference of y and every gradient between the two. A constexpr the host
  would pass differently from the build (e.g. the L2 policy, decided from the
  GPU's L2: build with ``--set EVICT_LAST=1`` for fp32 stage-1 maps on an
  H100) is reported.

The maps are those of ``tools/scan_sass.py`` (channels-last u, delta, dy;
``--grouped-maps``: grouped; ``--model-layouts``: the GroupMamba layer's),
batch 128, GroupMamba's four directions, D, delta_bias and softplus. Only
cases without the split path (one segment a row: the classification shapes)
are supported.

Usage:
    python tools/scan_cubins.py build 16,56,56 --dtype float32 --set EVICT_LAST=1 --out DIR
    python tools/scan_cubins.py build 87,14,14 --model-layouts --out DIR2
    python tools/scan_cubins.py run DIR [DIR ...]
"""
import argparse
import ctypes
import json
import os
import re
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan_sass  # noqa: E402  (tools/, beside this file)

_CTYPES = {'i1': ctypes.c_int8, 'i8': ctypes.c_int8, 'i16': ctypes.c_int16,
           'i32': ctypes.c_int32, 'i64': ctypes.c_int64, 'u32': ctypes.c_uint32,
           'u64': ctypes.c_uint64, 'fp32': ctypes.c_float, 'fp64': ctypes.c_double}


def launch_params(manifest: Dict, args: Sequence, kwargs: Dict) -> Tuple[List, List[str]]:
    """The ctypes values of one launch (the kernel's parameters in order:
    tensors as their addresses, tuples flattened, constexprs dropped, then
    ``extra`` null scratch pointers), and the constexprs whose value differs
    from the one the cubin was compiled for ('name[path]: got, compiled')."""
    names = manifest['arg_names']
    values = list(args) + [kwargs[n] for n in names[len(args):]]
    mismatches = []
    for key, want in manifest['constants'].items():
        path = [int(i) for i in key.split(',')]
        got = values[path[0]]
        for i in path[1:]:
            got = got[i]
        if isinstance(got, torch.Tensor) or got != want:
            mismatches.append(f'{names[path[0]]}{path[1:] or ""}: {got!r:.40}, compiled {want!r}')

    def one(value, kind: str):
        if kind.startswith('*'):
            return ctypes.c_uint64(value.data_ptr())
        return _CTYPES[kind](value)
    params = []
    for (_, kind), value in zip(manifest['signature'], values):
        if isinstance(kind, list):
            params += [one(v, k) for v, k in zip(value, kind) if k != 'constexpr']
        elif kind != 'constexpr':
            params.append(one(value, kind))
    return params + [ctypes.c_uint64(0)] * manifest['extra'], mismatches


def build(shape: Tuple[int, int, int], dtype: str, layout: str, override: Dict[str, int],
          out: str) -> None:
    """Compile the case (per, H, W) and save its cubins and manifests in ``out``."""
    import triton
    per, height, width = shape
    kernels = scan_sass.compile_case(per, height, width, 128, 'both', layout,
                                     getattr(torch, dtype), override)
    os.makedirs(out, exist_ok=True)
    for name, (kernel, kwargs, args) in kernels.items():
        entry = re.search(r'\.entry\s+\w+\((.*?)\)', kernel.asm['ptx'], re.S).group(1)
        n_params = len(re.findall(r'\.param\s', entry))
        signature = [[n, list(k) if isinstance(k, tuple) else k]
                     for n, k in kernel.src.signature.items()]
        manifest = dict(name=kernel.metadata.name, num_warps=kernel.metadata.num_warps,
                        shared=kernel.metadata.shared, signature=signature,
                        constants={','.join(map(str, p)): v
                                   for p, v in kernel.src.constants.items()},
                        arg_names=list(kernel.src.fn.arg_names), extra=0)
        params, mismatches = launch_params(manifest, args, kwargs)
        manifest['extra'] = n_params - len(params)
        if manifest['extra'] < 0 or mismatches or kernel.metadata.global_scratch_size:
            raise RuntimeError(f'{name}: {len(params)} arguments for {n_params} parameters, '
                               f'{mismatches}, scratch {kernel.metadata.global_scratch_size}')
        with open(os.path.join(out, f'{name}.json'), 'w') as f:
            json.dump(manifest, f)
        with open(os.path.join(out, f'{name}.cubin'), 'wb') as f:
            f.write(kernel.asm['cubin'])
        print(f'{out}/{name}: {n_params} parameters ({manifest["extra"]} scratch), '
              f'{manifest["num_warps"]} warps, {manifest["shared"]} B shared')
    with open(os.path.join(out, 'case.json'), 'w') as f:
        json.dump(dict(case=','.join(map(str, shape)), dtype=dtype, layout=layout,
                       override=override, triton=triton.__version__), f)


class CubinKernel:
    """Stands in for a Triton kernel (``k[grid](*args, **kwargs)``): launches
    a saved cubin with the CUDA driver API on the current stream."""

    def __init__(self, directory: str, name: str):
        self.cuda = ctypes.CDLL('libcuda.so.1')
        with open(os.path.join(directory, f'{name}.json')) as f:
            self.manifest = json.load(f)
        with open(os.path.join(directory, f'{name}.cubin'), 'rb') as f:
            self.image = f.read()
        self.module, self.function = ctypes.c_void_p(), ctypes.c_void_p()
        self._check('cuModuleLoadData', ctypes.byref(self.module), self.image)
        self._check('cuModuleGetFunction', ctypes.byref(self.function), self.module,
                    self.manifest['name'].encode())
        if self.manifest['shared'] > 48 * 1024:  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            self._check('cuFuncSetAttribute', self.function, 8, self.manifest['shared'])
        self.mismatches: set = set()

    def _check(self, call: str, *args) -> None:
        status = getattr(self.cuda, call)(*args)
        if status:
            raise RuntimeError(f'{call} failed: CUresult {status}')

    def __getitem__(self, grid: Tuple[int, ...]) -> Callable:
        def launch(*args, **kwargs):
            if kwargs.get('SUMMARY'):
                raise NotImplementedError('the split path (segments a row) was not built')
            params, mismatches = launch_params(self.manifest, args, kwargs)
            self.mismatches.update(mismatches)
            pointers = (ctypes.c_void_p * len(params))(
                *[ctypes.cast(ctypes.pointer(p), ctypes.c_void_p) for p in params])
            gx, gy, gz = tuple(grid) + (1,) * (3 - len(grid))
            self._check('cuLaunchKernel', self.function, gx, gy, gz,
                        32 * self.manifest['num_warps'], 1, 1, self.manifest['shared'],
                        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), pointers, None)
        return launch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run(directory: str) -> str:
    """One markdown row: the case through the cubins and through the
    installed Triton."""
    from triton.testing import do_bench_cudagraph

    from mmgroupmamba.ops import triton_scan as ts
    with open(os.path.join(directory, 'case.json')) as f:
        case = json.load(f)
    per, height, width = (int(v) for v in case['case'].split(','))
    t, kw = scan_sass.case_tensors(per, height, width, 128, case['layout'],
                                   getattr(torch, case['dtype']), 'cuda')
    args = (t['u'], t['delta'], t['A'], t['B'], t['C'], scan_sass.DIRS)
    native = ts._fwd_kernel, ts._bwd_kernel
    cubins = CubinKernel(directory, 'fwd'), CubinKernel(directory, 'bwd')
    results = {}
    saved = dict(ts.CONFIG_OVERRIDE)
    try:
        for which, kernels in (('installed', native), ('cubins', cubins)):
            ts._fwd_kernel, ts._bwd_kernel = kernels
            ts.CONFIG_OVERRIDE.clear()
            ts.CONFIG_OVERRIDE.update(case['override'])
            if which == 'cubins':  # the host passes what the build's host passed
                ts.CONFIG_OVERRIDE['MEM_T'] = cubins[0].manifest['constants'].get(
                    str(cubins[0].manifest['arg_names'].index('MEM_T')), 0)
            else:
                ts.CONFIG_OVERRIDE.pop('MEM_T', None)

            def fwd():
                return ts.selective_scan_2d_fwd_triton(*args, **kw)
            y, _, ckpt = fwd()

            def bwd():
                return ts.selective_scan_2d_bwd_triton(t['dy'], None, *args, ckpt, **kw)
            grads = bwd()
            results[which] = (y, grads, do_bench_cudagraph(fwd, rep=200) * 1e3,
                              do_bench_cudagraph(bwd, rep=200) * 1e3)
    finally:
        ts._fwd_kernel, ts._bwd_kernel = native
        ts.CONFIG_OVERRIDE.clear()
        ts.CONFIG_OVERRIDE.update(saved)
    (y0, g0, f0, b0), (y1, g1, f1, b1) = results['installed'], results['cubins']
    diffs = {'y': _rel(y1, y0)}
    diffs.update({n: _rel(a, b) for n, a, b in zip(
        ('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz', 'ddelta_bias'), g1, g0) if a is not None})
    worst = max(diffs, key=diffs.get)
    note = '; '.join(sorted(cubins[0].mismatches | cubins[1].mismatches)) or '–'
    return (f"| {case['case']} | {case['layout']} | {case['dtype']} | {case['override'] or '–'} "
            f"| {case['triton']} | {f1:.1f} / {b1:.1f} | {f0:.1f} / {b0:.1f} "
            f"| {diffs[worst]:.1e} ({worst}) | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help='compile a case for sm_90 and save its cubins (no GPU)')
    scan_sass.add_case_args(b)
    b.add_argument('--out', required=True)
    r = sub.add_parser('run', help='run built cases on the GPU against the installed Triton')
    r.add_argument('dirs', nargs='+')
    args = parser.parse_args()
    if args.command == 'build':
        shape, layout, override = scan_sass.case_args(args)
        build(shape, args.dtype, layout, override, args.out)
        return
    import triton
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}, installed '
          f'triton {triton.__version__}\n')
    print('| case | maps | dtype | build overrides | cubins\' triton | cubins fwd / bwd µs '
          '| installed triton fwd / bwd µs | max relative difference | constexprs differing |')
    print('|---|---|---|---|---|---|---|---|---|')
    for d in args.dirs:
        print(run(d), flush=True)


if __name__ == '__main__':
    main()
