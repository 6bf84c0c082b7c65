"""Airfoil hardware in Amaranth: processing elements, chains, decode units, NoC, core."""
