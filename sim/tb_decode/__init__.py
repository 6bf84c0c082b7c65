"""Testbench code for the decode unit (stream engine shared by amaranth.sim and cocotb)."""
