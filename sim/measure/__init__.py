"""Measurements on the RTL, the ISA simulator and Yosys that the bench figures are made of.

Each module runs one kind of experiment (a GEMV on the core, a stream through the
unpacker, traffic on the NoC, ...) and returns its raw counts, checked bit-exactly against
the golden on the way. The bench producers (``bench/<area>.py``) turn them into the named
figures of docs/figures.md; the tests run the same experiments at small shapes.
"""
