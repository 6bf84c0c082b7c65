"""The special-function unit (SFU): kernels bit-exact to airfoil.fixedpoint."""
