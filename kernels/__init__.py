"""Triton kernels of fastseg, installed as ``fastseg.kernels``.

Importing this package needs Triton; ``fastseg`` imports it only when the
``triton`` backend is asked for, so fastseg itself imports without Triton.
"""
