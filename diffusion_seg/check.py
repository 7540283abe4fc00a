"""`python -m diffusion_seg.check`: see :mod:`diffusion_seg.cli.check`."""

import sys

from diffusion_seg.cli.check import main

if __name__ == "__main__":
    sys.exit(main())
