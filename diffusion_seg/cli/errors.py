"""The one place where user errors become one line and a non-zero exit, for every command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from diffusion_seg.errors import UserError
from diffusion_seg.validation import check_command_line

if TYPE_CHECKING:  # a type only: every command imports this module, not all need torch
    from diffusion_seg.inference import Summary

T = TypeVar("T")

# What a command exits with on a user error (argparse and Hydra use 2 for bad usage too).
USER_ERROR_EXIT = 2
# Exit status when some inputs could not be read (the others are written).
SOME_FAILED_EXIT = 1


def error_line(err: UserError) -> str:
    """The message of a user error. An error raised in a DataLoader worker reaches the main
    process as the same type whose message is the worker's whole traceback
    (torch.utils.data._utils.ExceptionWrapper.reraise): only its last exception's message,
    on one line, is the user's."""
    message = str(err)
    if message.startswith("Caught ") and " in DataLoader worker process " in message:
        marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
        message = " ".join(message.rpartition(marker)[2].split())
    return message


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's :class:`~diffusion_seg.errors.UserError`\\ s into ``error: <message>``
    on stderr and exit status 2. Every other exception is a bug and keeps its traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {error_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None


def hydra_command(hydra_main: Callable[[], T], config_name: str) -> T:
    """Run a ``@hydra.main`` function of ``conf/<config_name>.yaml`` after checking its command
    line (:func:`diffusion_seg.validation.check_command_line`): renamed and misspelt keys, wrong
    types and ranges, missing mandatory values stop here, in one line, before Hydra creates
    the run dir. Hydra gets the command line back with ``++`` before Trainer arguments (and
    other ``_target_`` arguments) that the config files do not list."""
    from diffusion_seg.cli.console import quiet_known_warnings  # console imports Hydra

    quiet_known_warnings()
    with user_errors():
        sys.argv[1:] = check_command_line(sys.argv[1:], config_name)
    return hydra_main()


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are the project's one line and exit status 2
    (argparse's own print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        one_line_usage_error(self, message)


def one_line_usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    print(f"error: {message} (see {parser.prog} --help)", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Every argparse parser built inside reports usage errors as :class:`ArgumentParser`
    does, and refuses a negative number for a numeric option: for commands that dispatch to
    modules building their own parsers (``bench``: every count, size and time it takes is
    >= 0, and a negative one would fail mid-run with a traceback)."""
    original_error = argparse.ArgumentParser.error
    original_parse = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = original_parse(self, args, namespace)
        for action in self._actions:
            values = getattr(namespace, action.dest, None)
            for value in values if isinstance(values, list) else [values]:
                if action.type in (int, float) and isinstance(value, (int, float)) and value < 0:
                    name = "/".join(action.option_strings) or action.dest
                    self.error(f"argument {name}: {value:g} is negative; give a number >= 0")
        return namespace, extras

    argparse.ArgumentParser.error = one_line_usage_error  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original_error  # type: ignore[method-assign]
        argparse.ArgumentParser.parse_known_args = original_parse  # type: ignore[method-assign]


def exit_if_any_failed(summary: Summary) -> None:
    """After the readable inputs are written (predict, visualize): name every skipped file of
    the summary on stderr and exit with
    :data:`SOME_FAILED_EXIT`; nothing when all were read."""
    if summary.failed:
        lines = "\n".join(f"  {message}" for _, message in summary.failed)
        print(f"error: {len(summary.failed)} of {len(summary.failed) + len(summary.written)} "
              f"input(s) could not be read and were skipped:\n{lines}", file=sys.stderr, flush=True)
        raise SystemExit(SOME_FAILED_EXIT)
