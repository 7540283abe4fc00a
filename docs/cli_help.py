"""Print the ``--help`` text of every command as JSON ``{command: text}``.

Run by ``docs/hooks.py`` at build time (one process: the imports are paid once) so the
command-line reference is what the commands print. Each command is run in this process with
``--help`` exactly as ``python -m diffusion_seg.<command> --help`` runs it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")

# (title, module whose ``main`` runs, argv after the program name)
COMMANDS: list[tuple[str, str, list[str]]] = [
    ("train", "diffusion_seg.cli.train", ["--help"]),
    ("eval", "diffusion_seg.cli.eval", ["--help"]),
    ("predict", "diffusion_seg.cli.predict", ["--help"]),
    ("visualize", "diffusion_seg.cli.visualize", ["--help"]),
    ("export", "diffusion_seg.cli.export", ["--help"]),
    ("check", "diffusion_seg.cli.check", ["--help"]),
    ("prepare", "diffusion_seg.cli.prepare", ["--help"]),
    ("report", "diffusion_seg.cli.report", ["--help"]),
    ("pretrain", "diffusion_seg.pretrain", ["--help"]),
    ("bench", "diffusion_seg.bench.__main__", ["--help"]),
]


def run(module_name: str, argv: list[str]) -> str:
    """stdout of ``module.main()`` with ``sys.argv = [prog, *argv]`` (Hydra's mains read
    ``sys.argv``; the others take ``argv`` too)."""
    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(module_name)
    out = io.StringIO()
    saved = sys.argv
    sys.argv = [module_name, *argv]
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out):
            try:
                module.main()
            except SystemExit as exit:
                if exit.code not in (0, None):
                    raise RuntimeError(f"{module_name} {' '.join(argv)} exited with {exit.code}") from None
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return out.getvalue()


def main() -> None:
    from diffusion_seg.bench.__main__ import BENCHMARKS

    commands = COMMANDS + [(f"prepare {name}", "diffusion_seg.cli.prepare", [name, "--help"])
                           for name in ("ade20k", "voc_aug", "pascal_context", "person_part")]
    commands += [(f"bench {name}", f"diffusion_seg.bench.{name}", ["--help"]) for name in BENCHMARKS]
    texts = {title: run(module, argv) for title, module, argv in commands}
    sys.stdout.write(json.dumps(texts))


if __name__ == "__main__":
    main()
