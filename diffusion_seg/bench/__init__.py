"""Benchmarks: ``python -m diffusion_seg.bench <pdn|difnet|train|gpu|data|oracle|crf>
[options]`` (``diffusion-seg-bench``); each prints a table of measured numbers. ``common``
holds what they share (interleaved timing, isolated memory measurements, tables)."""
