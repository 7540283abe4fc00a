"""The commands: one module per command, each a thin layer over the library (it parses its
arguments, calls the library and prints).

``python -m diffusion_seg.<command>`` (train, eval, predict, export, visualize, check,
prepare, report) runs ``diffusion_seg.cli.<command>.main``; so do the
``diffusion-seg-<command>`` console scripts. The benchmarks are ``python -m
diffusion_seg.bench`` (:mod:`diffusion_seg.bench`). ``console`` and ``errors`` are the
commands' shared output and error handling.
"""
