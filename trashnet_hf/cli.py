"""The one way the command lines run: parse, validate, run, and turn a user error into one line.

    sys.exit(cli.run(TrainConfig, main_body, description=__doc__))

Bad flags (unknown, abbreviated, mistyped or invalid) exit 2; bad data, files or checkpoints exit 1;
both print ``<prog>: error: <message>`` as a single line, with no traceback. Anything else is a bug and
propagates with its traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from argparse import ArgumentParser
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from transformers import HfArgumentParser

from trashnet_hf.errors import ConfigError, UserError
from trashnet_hf.progress import quiet_library_bars

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# Field metadata key: {"positional": True} makes a field a positional argument (a list field takes one or
# more values), e.g. the image paths of ``python -m trashnet_hf.predict PATH... --model M``.
POSITIONAL = "positional"


def help_field(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose ``--help`` text is ``text`` (every flag of every command line has one)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


class _Parser(HfArgumentParser):
    @staticmethod
    def _parse_dataclass_field(parser: ArgumentParser, field: dataclasses.Field) -> None:
        if not field.metadata.get(POSITIONAL):
            HfArgumentParser._parse_dataclass_field(parser, field)
            return
        kwargs = {k: v for k, v in field.metadata.items() if k != POSITIONAL}
        many = typing.get_origin(field.type) is list
        value_type = field.type.__args__[0] if many else field.type
        parser.add_argument(
            field.name, type=value_type, nargs="+" if many else None, metavar=field.name.upper(), **kwargs
        )

    def error(self, message: str) -> NoReturn:
        # argparse's own errors (a mistyped value, a bad choice) become ours: one line, exit 2.
        raise ConfigError(message)


def parse(
    types: type | Iterable[type], argv: list[str] | None, description: str | None, prog: str | None = None
) -> tuple[Any, ...]:
    """The dataclasses of ``types`` from ``argv``; ConfigError for an unknown or abbreviated flag."""
    # allow_abbrev=False: `--learning-rat` must not quietly mean `--learning-rate`.
    parser = _Parser(types, description=description, allow_abbrev=False, prog=prog)
    _, unknown = parser.parse_known_args(argv)  # before the dataclasses validate any value
    if unknown:
        raise ConfigError(f"unknown argument {' '.join(unknown)}; see --help for the flags.")
    return parser.parse_args_into_dataclasses(args=argv)


def run(
    types: type | Iterable[type],
    body: Callable[..., int],
    argv: list[str] | None = None,
    description: str | None = None,
    prog: str | None = None,
) -> int:
    """Parse ``argv`` into ``types``, call ``body(*configs)`` and return its exit code; a UserError
    becomes one line on stderr and its exit code."""
    prog = prog or _Parser().prog
    try:
        configs = parse(types, argv, description, prog)
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        quiet_library_bars()  # off a terminal: no carriage-return bars in the log
        return body(*configs)
    except UserError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        sys.stderr.write(f"{prog}: error: {message}\n")
        return err.exit_code
