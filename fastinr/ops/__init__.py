"""Triton kernels of the `triton` backend; `fastinr.backends.triton_backend.decode` is its entry point.

Import it through fastinr.backends (the one place that imports optional pieces), not directly.
"""
