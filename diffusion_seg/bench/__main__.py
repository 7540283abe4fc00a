"""Dispatch ``python -m diffusion_seg.bench NAME [options]`` to ``diffusion_seg.bench.NAME``."""

from __future__ import annotations

import ast
import importlib
import sys
import textwrap
from pathlib import Path

from diffusion_seg.cli.errors import USER_ERROR_EXIT, one_line_usage_errors, user_errors
from diffusion_seg.config import closest
from diffusion_seg.runtime import keep_freed_memory

BENCHMARKS = ("pdn", "difnet", "train", "gpu", "data", "oracle", "crf")


def usage() -> str:
    """``--help``: every benchmark with the first paragraph of its module docstring (read from
    the source, so listing them imports none)."""
    lines = [f"usage: python -m diffusion_seg.bench {{{','.join(BENCHMARKS)}}} [options]", "",
             "Benchmarks (each has its own --help: python -m diffusion_seg.bench NAME --help):"]
    for name in BENCHMARKS:
        doc = ast.get_docstring(ast.parse((Path(__file__).parent / f"{name}.py").read_text())) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        lines.append(textwrap.fill(summary, 100, initial_indent=f"  {name:<8}", subsequent_indent=" " * 10))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if not argv or argv[0] not in BENCHMARKS:
        guess = closest(argv[0], BENCHMARKS) if argv else None
        given = (f"unknown benchmark {argv[0]!r}" + (f" (did you mean {guess}?)" if guess else "")
                 if argv else "no benchmark given")
        print(f"error: {given}; usage: python -m diffusion_seg.bench {{{','.join(BENCHMARKS)}}} [options] "
              "(each benchmark has its own --help)", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)
    keep_freed_memory()  # what train, eval and predict run with (malloc_keep_freed=true)
    # Each benchmark's own argparse parser and its config errors (--override): one line, exit 2.
    with one_line_usage_errors(), user_errors():
        importlib.import_module(f"diffusion_seg.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
