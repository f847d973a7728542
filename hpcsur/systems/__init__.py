"""Microscopic systems: physics, numba kernels, integrators, initial conditions, observables.

Never imports mpi4py, torch or zarr.
"""
from hpcsur.systems.base import Frame, Layout, System, check_indices, check_state, simulate

__all__ = ["Frame", "Layout", "System", "check_indices", "check_state", "simulate"]
