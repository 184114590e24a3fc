"""Triton kernels for bionic-sparse (kernels and launch helpers only)."""
