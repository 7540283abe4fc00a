"""`python -m diffusion_seg.visualize`: see :mod:`diffusion_seg.cli.visualize`."""

import sys

from diffusion_seg.cli.visualize import main

if __name__ == "__main__":
    sys.exit(main())
