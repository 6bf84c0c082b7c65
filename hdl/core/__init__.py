"""The accelerator core: CSR block, instruction fetch, dispatcher, units and buffers.

:class:`hdl.core.top.Core` is the top level; ``airfoil verilog`` elaborates it.
"""
