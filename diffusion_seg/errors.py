"""The project's user-error types: problems the user fixes (a config key, a path, a file).

Every command prints these as one line, ``error: <message>``, and exits non-zero
(:func:`diffusion_seg.cli.errors.user_errors`); any other exception is a bug and keeps its
traceback. Each subclass also derives from the built-in type it refines (``ValueError``,
``FileNotFoundError``), so library code can catch them the usual way.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(UserError, ValueError):
    """A config key or value that cannot work; the message names the key and what is allowed."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset root, split list or directory is missing; the message says how to fix it."""


class BadSampleError(UserError, ValueError):
    """A sample that cannot be used as it is; the message names the file and the problem."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist; the message says where to look."""
