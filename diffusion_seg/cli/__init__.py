"""The commands: one module per command, each a thin layer over the library.

``python -m diffusion_seg.<command>`` (train, eval, check, prepare, visualize, bench) runs
``diffusion_seg.cli.<command>.main``; so do the ``diffusion-seg-<command>`` console scripts.
"""
