"""tools/scan_sass.py's reading of SASS control bits and its case arguments (CPU, no
compile)."""
import argparse

import pytest
from scan_utils import load_tool


def _scan_sass():
    return load_tool('scan_sass')


def _line(addr: str, text: str, low: str, high: str) -> str:
    return (f'        /*{addr}*/                   {text} ;    /* {low} */\n'
            f'                                                 /* {high} */\n')


# Instructions of the T stage-3 forward's chunk loop as `nvdisasm -c -hex` prints them (triton
# 3.6, sm_90; `tools/scan_sass.py 87,14,14 --pass fwd --dump DIR`), where ncu's stall sampling
# put 18% and 11% of the samples on the FMUL and the MOV (docs/benchmarks.md).
LOOP = ('.L_x_7:\n'
        + _line('2a80', 'FADD R141, R46, R67.reuse', '0x000000432e8d7221', '0x120fe20000000000')
        + _line('3320', '@P6 LDG.E.64 R22, desc[UR6][R4.64]', '0x0000000604166981',
                '0x0000a8000c1e1b00')
        + _line('3430', '@P6 LDG.E.64 R4, desc[UR6][R6.64]', '0x0000000606046981',
                '0x0000e8000c1e1b00')
        + _line('4d30', 'MUFU.EX2 R52, R2', '0x0000000200347308', '0x000ee20000000800')
        + _line('4da0', 'FMUL R154, R52, R164', '0x000000a4349a7220', '0x008fc80000400000')
        + _line('60a0', 'IMAD.MOV.U32 R52, RZ, RZ, R14', '0x000000ffff347224',
                '0x004fe200078e000e')
        + _line('6320', '@P4 BRA `(.L_x_7)', '0xffffffc400d44947', '0x008fec000383ffff')
        + '.L_x_8:\n')


def test_exposed_loads_reads_the_wait_masks():
    """The FMUL waits on scoreboard 3, which the MUFU and the second load set;
    the MOV on scoreboard 2, the first load's; the loop-top FADD waits on
    scoreboard 5 with no load of this iteration on it, and the branch on 3
    after the FMUL's wait has emptied it."""
    found = _scan_sass().exposed_loads(LOOP)
    assert found == ['waits on SB3 at 4: FMUL R154, R52, R164 (loads issued at [2])',
                     'waits on SB2 at 5: IMAD.MOV.U32 R52, RZ, RZ, R14 (loads issued at [1])']


def test_exposed_loads_without_a_wait_on_the_loads():
    """The same loop without the FMUL and the MOV: the branch's wait on
    scoreboard 3 now finds the second load there."""
    lines = LOOP.splitlines(keepends=True)
    keep = [l for i, l in enumerate(lines) if not (9 <= i <= 12)]
    assert ''.join(keep).count('FMUL') == 0 and ''.join(keep).count('MOV') == 0
    found = _scan_sass().exposed_loads(''.join(keep))
    assert found == ['waits on SB3 at 4: @P4 BRA `(.L_x_7) (loads issued at [2])']


def test_case_arguments_name_one_layout(capsys):
    """The maps of a case: channels-last unless ``--grouped-maps`` or
    ``--model-layouts`` (not both: the compile would be of one of them
    while the caller believes the other)."""
    tool = _scan_sass()
    parser = argparse.ArgumentParser()
    tool.add_case_args(parser)
    for flags, layout in (([], 'channels-last'), (['--grouped-maps'], 'grouped'),
                          (['--model-layouts'], 'model')):
        shape, got, override = tool.case_args(parser.parse_args(
            ['87,14,14', *flags, '--set', 'BD=32', 'num_warps=2']))
        assert (shape, got, override) == ((87, 14, 14), layout, {'BD': 32, 'num_warps': 2})
        assert got in tool.LAYOUTS
    with pytest.raises(SystemExit):
        parser.parse_args(['87,14,14', '--grouped-maps', '--model-layouts'])
    assert 'not allowed with argument' in capsys.readouterr().err
