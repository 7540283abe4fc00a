"""`python -m diffusion_seg.eval`: see :mod:`diffusion_seg.cli.eval`."""

from diffusion_seg.cli.eval import main

if __name__ == "__main__":
    main()
