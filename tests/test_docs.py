"""The docs cannot drift from the code: every flag README.md and docs/ name exists in its command's --help,
and the front door lists every subcommand."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trashnet_hf import __main__ as front_door

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
# A command in a code span or block; the flags after it (in that block line or the spans that follow
# it in the same file) are its flags. pip, pytest, curl and git are other tools' flags: not checked.
COMMAND = re.compile(
    r"trashnet-hf (?P<sub>[a-z]+)\b|python -m trashnet_hf (?P<msub>[a-z]+)\b"
    r"|(?<![\w/.])(?P<script>train|app)\.py|bench/(?P<bench>\w+)\.py|(?P<accelerate>accelerate launch)"
    r"|(?P<other>pip install|pytest|curl|git |wandb |ruff |hf auth|chromium)"
)


def _help_of_main(main, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv)
    return out.getvalue()


@functools.cache
def command_flags(command: str) -> frozenset[str]:
    """The flags ``command --help`` lists."""
    if command.startswith("trashnet-hf "):
        text = _help_of_main(front_door.main, [command.split()[1], "--help"])
    elif command in ("train.py", "app.py") or command.startswith("bench/"):
        text = subprocess.run(
            [sys.executable, str(ROOT / command), "--help"], capture_output=True, text=True, check=True
        ).stdout
    else:  # accelerate launch: its own flags (asked in a fresh process), plus train.py's after the script
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--help"]
        text = subprocess.run(launcher, capture_output=True, text=True, check=True).stdout
        text += " ".join(command_flags("train.py"))
    return frozenset(FLAG.findall(text))


def _units(text: str) -> list[tuple[int, str]]:
    """The code of a markdown file, in order: each block line (with backslash continuations joined) and
    each inline span, with its line number. A flag outside code is reported as the unit "<prose>"."""
    units, in_block, pending = [], False, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            pending += line.rstrip("\\") + " "
            if not line.endswith("\\"):
                units.append((number, pending))
                pending = ""
            continue
        units += [(number, f"<prose> {flag}") for flag in FLAG.findall(re.sub(r"`[^`]*`", "", line))]
        units += [(number, span) for span in re.findall(r"`([^`]*)`", line)]
    return units


def _named_flags(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, flag, the command it belongs to) for every flag in ``path``'s code."""
    found, current = [], None
    for number, unit in _units(path.read_text()):
        if unit.startswith("<prose>"):
            found.append((number, unit.split()[1], "<prose>"))
            continue
        tokens = sorted(
            [(m.start(), "command", m) for m in COMMAND.finditer(unit)]
            + [(m.start(), "flag", m) for m in FLAG.finditer(unit)],
            key=lambda t: t[0],
        )
        for _pos, kind, match in tokens:
            if kind == "command":
                groups = match.groupdict()
                sub = groups["sub"] or groups["msub"]
                current = (
                    f"trashnet-hf {sub}" if sub else f"{groups['script']}.py" if groups["script"]
                    else f"bench/{groups['bench']}.py" if groups["bench"]
                    else "accelerate launch" if groups["accelerate"] else None
                )  # fmt: skip
            else:
                found.append((number, match.group(0), current))
    return found


@pytest.mark.slow  # asks each documented command for its --help: a fresh interpreter each, ~40 s in all
def test_every_documented_flag_exists_in_its_commands_help() -> None:
    problems, checked = [], 0
    for path in DOCS:
        for number, flag, command in _named_flags(path):
            where = f"{path.relative_to(ROOT)}:{number} {flag}"
            if command == "<prose>":
                problems.append(f"{where}: a flag outside code (write it in `code` beside its command)")
            elif command is None:
                continue  # another tool's flag (pip, pytest, curl, git)
            elif command.startswith("trashnet-hf ") and command.split()[1] not in front_door.COMMANDS:
                problems.append(f"{where}: no subcommand {command!r}")
            elif flag not in command_flags(command):
                problems.append(f"{where}: not in `{command} --help`")
            else:
                checked += 1
    assert not problems, "\n".join(problems)
    assert checked > 50  # control: the scanner found the documented flags


def test_the_checker_catches_a_made_up_flag(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("Run `trashnet-hf predict x.jpg --model m --made-up-flag` and pass --loose.\n")
    named = _named_flags(doc)
    assert (1, "--made-up-flag", "trashnet-hf predict") in named and (1, "--loose", "<prose>") in named
    assert "--made-up-flag" not in command_flags("trashnet-hf predict")
    assert "--model" in command_flags("trashnet-hf predict")


def test_the_front_door_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trashnet_hf", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("data", "evaluate", "predict", "export", "publish", "backbone", "app"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.M), out
    bad = subprocess.run([sys.executable, "-m", "trashnet_hf", "trian"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown subcommand 'trian'" in bad.stderr


def test_a_subcommand_keeps_the_one_line_error_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert front_door.main(["predict", "missing.jpg", "--model", "x", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trashnet-hf predict: error: ") and err.count("\n") == 1, err
