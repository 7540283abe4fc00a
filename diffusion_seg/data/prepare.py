"""Old name of `python -m diffusion_seg.prepare`, kept so existing scripts keep working.

Importing this module imports nothing: the data package stays free of the command layer."""

if __name__ == "__main__":
    import sys

    from diffusion_seg.cli.prepare import main

    sys.exit(main())
