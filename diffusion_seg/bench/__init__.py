"""Benchmarks: ``python -m diffusion_seg.bench <pdn|difnet|data> [options]``; each prints a
table of measured numbers."""
