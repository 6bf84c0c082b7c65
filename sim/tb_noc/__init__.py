"""Testbench code for the network on chip (traffic engine shared by amaranth.sim and cocotb)."""
