"""Triton kernels of the `triton` backend; `fastinr.ops.decoder.decode` is its entry point.

Import it through fastinr.backend (the one place that imports optional pieces), not directly.
"""
