"""Streamed GEMV through the decode unit: stimulus, golden results and the cocotb bench."""
