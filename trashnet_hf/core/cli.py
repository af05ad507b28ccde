"""The one way the command lines run: parse, validate, run, and turn a user error into one line.

    sys.exit(cli.run(TrainConfig, main_body, description=__doc__))

Bad flags (unknown, abbreviated, mistyped or invalid) exit 2; bad data, files or checkpoints exit 1;
both print ``<prog>: error: <message>`` as a single line, with no traceback. Anything else is a bug and
propagates with its traceback.

The flags come from the dataclasses' fields, as transformers' ``HfArgumentParser`` makes them (``--name``
and ``--name-with-hyphens``; a bool as ``--flag`` or ``--flag true|false``, and ``--no-flag`` when it
defaults to true; a Literal as choices; a list as one or more values), by a small argparse builder here:
the Space serving an ONNX model installs no transformers (129 MB, 1.3 s to import for a parser).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
import typing
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser, ArgumentTypeError
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, NoReturn, Union

from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.core.progress import quiet_library_bars

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# Field metadata key: {"positional": True} makes a field a positional argument (a list field takes one or
# more values), e.g. the image paths of ``trashnet-hf predict PATH... --model M``.
POSITIONAL = "positional"


def help_field(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose ``--help`` text is ``text`` (every flag of every command line has one)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


OVERWRITE_HELP = "Replace the output if it exists (otherwise refused)."


def check_output(flag: str, value: str | os.PathLike, overwrite: bool, folder: bool = False) -> Path:
    """The one output check of every command, before any work: ``value`` must be writable where it is,
    and something already there (a user's file, a trained model) is replaced only with ``--overwrite``.

    A file output must not be a folder and its folder must exist; a folder output (``folder``) must not be
    a file, and an existing one must be empty. Raises ConfigError naming ``flag``."""
    target = Path(value)
    if folder:
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{flag} {str(value)!r} is a file; name a folder.")
        taken = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
        parent = target if target.is_dir() else _nearest_existing(target)
    else:
        if target.is_dir():
            raise ConfigError(f"{flag} {str(value)!r} is a folder; name a file in it.")
        parent = target.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag}: folder {str(parent)!r} does not exist; create it first.")
        taken = target.exists() or target.is_symlink()
    if taken and not overwrite:
        what = f"holds {', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}" if folder else "exists"
        raise ConfigError(f"{flag} {str(value)!r} {what}; pass --overwrite to replace it, or name another.")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {str(value)!r}: folder {str(parent)!r} cannot be written to.")
    return target


def check_device(flag: str, value: str | None) -> None:
    """Refuse, naming ``flag``, a device name torch does not know and a device this machine lacks
    (``cuda`` without a GPU, ``cuda:3`` with two, ``meta``), before any work; None: the default."""
    if value is None:
        return
    import torch  # here, not at the top: the CLI module stays light for commands that need no torch

    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise ConfigError(f"{flag} {value!r} is not a device name (cpu, cuda, cuda:1).") from err
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu: what can run a model
    is_available = getattr(backend, "is_available", None)
    count = backend.device_count() if is_available is not None and is_available() else 0
    if (device.index or 0) >= count:  # also count 0: no such device at all
        found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        raise ConfigError(
            f"{flag} {value!r}: this machine has no such device (it has {', '.join(found)}); pick one of "
            "those, or leave the flag out for the default."
        )


def _nearest_existing(path: Path) -> Path:
    """The closest existing folder above ``path`` (where a new folder would be created)."""
    for parent in path.absolute().parents:
        if parent.is_dir():
            return parent
    return Path.cwd()


_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


def _to_bool(value: str | bool) -> bool:
    """A bool flag's value: true/false, yes/no, t/f, y/n, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ArgumentTypeError(f"expected true or false, got {value!r}")


def _choice(choices: tuple[Any, ...]) -> Callable[[str], Any]:
    """A Literal flag's type: the choice whose text is ``value`` (argparse then checks it is a choice)."""
    by_text = {str(c): c for c in choices}
    return lambda value: by_text.get(value, value)


def _strip_optional(hint: Any) -> Any:
    """``X`` of ``X | None`` (``bool | None`` stays whole: it takes a value); other unions are refused."""
    if typing.get_origin(hint) not in (Union, types.UnionType):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"a flag has one type (or that type | None), not {hint}")
    return hint if args[0] is bool else args[0]


def _optional_bool(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType) and set(typing.get_args(hint)) == {
        bool,
        type(None),
    }


def _default(field: dataclasses.Field, kwargs: dict[str, Any]) -> None:
    """The field's default into ``kwargs``, or required when it has none."""
    if field.default is not dataclasses.MISSING:
        kwargs["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        kwargs["default"] = field.default_factory()
    else:
        kwargs["required"] = True


def _add_field(parser: ArgumentParser, field: dataclasses.Field, hint: Any) -> None:
    """One dataclass field as a flag (or a positional argument, with ``{POSITIONAL: True}`` metadata)."""
    kwargs = {k: v for k, v in field.metadata.items() if k != POSITIONAL}
    hint = _strip_optional(hint)
    many = typing.get_origin(hint) is list
    if field.metadata.get(POSITIONAL):
        value_type = typing.get_args(hint)[0] if many else hint
        parser.add_argument(
            field.name, type=value_type, nargs="+" if many else None, metavar=field.name.upper(), **kwargs
        )
        return
    names = [f"--{field.name}", *([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])]
    if typing.get_origin(hint) is Literal:
        kwargs |= {"choices": typing.get_args(hint), "type": _choice(typing.get_args(hint))}
        _default(field, kwargs)
    elif hint is bool or _optional_bool(hint):
        kwargs["type"] = _to_bool
        if hint is bool or field.default not in (None, dataclasses.MISSING):
            # `--flag` alone means true; `--flag false` also works, and absent means the default.
            default = False if field.default is dataclasses.MISSING else field.default
            kwargs |= {"default": default, "nargs": "?", "const": True}
    elif many:
        kwargs |= {"type": typing.get_args(hint)[0], "nargs": "+"}
        _default(field, kwargs)
    else:
        kwargs["type"] = hint
        _default(field, kwargs)
    parser.add_argument(*names, **kwargs)
    if field.default is True and kwargs["type"] is _to_bool:  # a flag on by default can be switched off
        no = [f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}"]
        help_text = field.metadata.get("help")
        parser.add_argument(*no, action="store_false", dest=field.name, default=False, help=help_text)


class _Parser(ArgumentParser):
    """The flags of one or more dataclasses; a parse error is a ConfigError (one line, exit 2)."""

    def __init__(self, types: Iterable[type] = (), **kwargs: Any) -> None:
        super().__init__(formatter_class=ArgumentDefaultsHelpFormatter, **kwargs)
        self.dataclass_types = list(types)
        for dtype in self.dataclass_types:
            hints = typing.get_type_hints(dtype)
            for field in dataclasses.fields(dtype):
                if field.init:
                    _add_field(self, field, hints[field.name])

    def parse_args_into_dataclasses(self, args: list[str] | None) -> tuple[Any, ...]:
        """One instance of each dataclass, built (and so validated) from ``args``."""
        namespace = vars(self.parse_args(args))
        return tuple(
            dtype(**{f.name: namespace[f.name] for f in dataclasses.fields(dtype) if f.init})
            for dtype in self.dataclass_types
        )

    def error(self, message: str) -> NoReturn:
        # argparse's own errors (a mistyped value, a bad choice) become ours: one line, exit 2.
        raise ConfigError(message)


def parse(
    types: type | Iterable[type], argv: list[str] | None, description: str | None, prog: str | None = None
) -> tuple[Any, ...]:
    """The dataclasses of ``types`` from ``argv``; ConfigError for an unknown or abbreviated flag."""
    # allow_abbrev=False: `--learning-rat` must not quietly mean `--learning-rate`.
    types = [types] if isinstance(types, type) else list(types)
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
