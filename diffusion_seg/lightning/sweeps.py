"""Moved out of ``lightning/`` (it holds no Lightning): the job record is
:mod:`diffusion_seg.jobs`, the Hydra side of sweeps :mod:`diffusion_seg.sweeps`. The names
below stay importable for ``diffusion_seg/bench/oracle.py`` until it imports them from
:mod:`diffusion_seg.jobs`; nothing else may use this module (tests/test_layout.py)."""

from diffusion_seg.jobs import job_overrides, write_finished, write_yaml_atomic

__all__ = ["job_overrides", "write_finished", "write_yaml_atomic"]
