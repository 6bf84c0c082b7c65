"""cocotb testbench modules (run by :func:`sim.cocotb_runner.run_cocotb`)."""
