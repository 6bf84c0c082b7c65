"""Airfoil simulation: golden model, ISA simulator, cycle model and the RTL runner."""
