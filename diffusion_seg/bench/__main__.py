"""Dispatch ``python -m diffusion_seg.bench NAME [options]`` to ``diffusion_seg.bench.NAME``."""

from __future__ import annotations

import importlib
import sys

from diffusion_seg.runtime import keep_freed_memory

BENCHMARKS = ("pdn", "difnet", "train", "gpu", "data")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        raise SystemExit(
            f"usage: python -m diffusion_seg.bench {{{','.join(BENCHMARKS)}}} [options]\n"
            "  (each benchmark has its own --help)"
        )
    keep_freed_memory()  # what train, eval and predict run with (malloc_keep_freed=true)
    importlib.import_module(f"diffusion_seg.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
