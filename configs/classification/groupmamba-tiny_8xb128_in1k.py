# GroupMamba-T: 23.4M params, 4.5 GFLOPs, 83.3 top-1 (paper).
_base_ = './_base_/groupmamba_in1k.py'
