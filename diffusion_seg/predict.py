"""`python -m diffusion_seg.predict`: see :mod:`diffusion_seg.cli.predict`."""

from diffusion_seg.cli.predict import main

if __name__ == "__main__":
    main()
