"""`python -m diffusion_seg.train`: see :mod:`diffusion_seg.cli.train`."""

from diffusion_seg.cli.train import main

if __name__ == "__main__":
    main()
