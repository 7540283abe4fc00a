"""`python -m diffusion_seg.export`: see :mod:`diffusion_seg.cli.export`."""

from diffusion_seg.cli.export import main

if __name__ == "__main__":
    main()
