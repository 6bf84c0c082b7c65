"""Airfoil compiler: lowers quantized models into programs and weight images."""
