"""Triton kernels for bionic-sparse (kernels and launch helpers only).

Installed and imported as ``bionic_sparse.triton_kernels`` (this folder stays at the top of the
repository), so it can neither shadow nor be shadowed by Triton's or PyPI's ``triton_kernels``.
"""
