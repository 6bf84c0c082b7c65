"""Design-space exploration: ``airfoil explore SPACE.yaml --model MODEL``.

:mod:`explore.space` reads a space (a base config and the fields swept),
:mod:`explore.point` evaluates one point (validity, the model planned for it, its
projected speed, the whole core's resource estimate), :mod:`explore.sweep` runs the
points on Dask with a resumable cache, and :mod:`explore.front` finds the Pareto front
and writes the CSV and the plot.
"""
