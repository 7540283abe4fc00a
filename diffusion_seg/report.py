"""`python -m diffusion_seg.report`: see :mod:`diffusion_seg.cli.report`."""

import sys

from diffusion_seg.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
