"""The one place where user errors become one line and a non-zero exit, for every command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from diffusion_seg.config import renamed_key_error
from diffusion_seg.errors import UserError

T = TypeVar("T")

# What a command exits with on a user error (argparse and Hydra use 2 for bad usage too).
USER_ERROR_EXIT = 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's :class:`~diffusion_seg.errors.UserError`\\ s into ``error: <message>``
    on stderr and exit status 2. Every other exception is a bug and keeps its traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None


def hydra_command(hydra_main: Callable[[], T], argv: Sequence[str] | None = None) -> T:
    """Run a ``@hydra.main`` function after checking the command line for renamed keys,
    whose Hydra message ("Key 'inference' is not in struct") would not give the new name."""
    with user_errors():
        error = renamed_key_error(list(sys.argv[1:] if argv is None else argv))
        if error is not None:
            raise error
    return hydra_main()
