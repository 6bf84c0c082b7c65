"""Shared pytest set-up: tool environment, seeds in failure reports, temp build roots."""

import os

import pytest

from airfoil.toolenv import setup_environment

setup_environment()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # Tests that build the same Verilator model share an xdist group, so the build
    # happens once per worker instead of racing (the build lock makes races safe anyway).
    # First: pytest-xdist reads the xdist_group markers in its own hook of this name.
    for item in items:
        marker = item.get_closest_marker("rtl")
        if marker is not None and marker.kwargs.get("group"):
            item.add_marker(pytest.mark.xdist_group(marker.kwargs["group"]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and hasattr(item, "callspec"):
        seed = item.callspec.params.get("seed")
        if seed is not None:
            rep.sections.append(("seed", f"reproduce with seed={seed}"))
