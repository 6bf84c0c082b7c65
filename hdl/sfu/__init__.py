"""The special-function unit (SFU): kernels bit-exact to airfoil.fixedpoint.

* :mod:`.kernel`: the contract between the unit and its kernels;
* :mod:`.unit`: :class:`~.unit.SfuUnit`, the SFU queue's unit;
* kernels: :mod:`.elementwise` (COPY, SILU, MUL, ADD), :mod:`.quant` (QUANT_TOKEN),
  :mod:`.rmsnorm` (RMSNORM), :mod:`.rope` (ROPE), :mod:`.attention` (ATT_QK, SOFTMAX,
  ATT_PV); :mod:`.arith`: their shared integer blocks.
"""
