"""diffusion-seg: semantic segmentation with context-diffusion heads (PDN, DifNet)."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra config tree lives at the repository root (`conf/`), beside this package.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
