"""Errors a user can fix. Each message is one line naming the flag, file or value and how to fix it.

The command lines (``trashnet_hf.core.cli.run``) print that line and exit with ``exit_code``: 2 for a bad flag
(as argparse does), 1 for bad data, files or checkpoints. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: data, a file, a folder or a checkpoint that cannot be used as it is."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A flag has a value that cannot work; the message names the flag and how to fix it."""

    exit_code = 2


class DataError(UserError):
    """The data cannot be used as it is (too many bad files, an empty class, an empty split, a split
    manifest that does not match it, ...)."""
