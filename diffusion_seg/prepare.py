"""`python -m diffusion_seg.prepare`: see :mod:`diffusion_seg.cli.prepare`."""

import sys

from diffusion_seg.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
