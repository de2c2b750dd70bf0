"""Entry-point helpers for the ``python -m torchflava.<command>`` modules: running, argument types, output."""

import argparse
import json
import os
from pathlib import Path
import sys
from typing import Callable, Optional, Sequence

from torchflava.utils.checkpoint import atomic_write


def run_command(main: Callable[[], object]) -> None:
    """Run ``main``; report a bad argument, value or file (ValueError, TypeError, FileNotFoundError) as one
    line on stderr and exit with 2."""
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def command_parser(module: str, doc: Optional[str]) -> argparse.ArgumentParser:
    """The argument parser of the command ``python -m <module>``, its ``--help`` the module's ``doc`` as written
    (its examples' line breaks kept)."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum`` (argparse names the option and exits with 2 otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)


def at_file_lines(parser: argparse.ArgumentParser, option: str, value: str, what: str) -> list[str]:
    """The lines of the UTF-8 file an ``@FILE`` value of ``option`` names (a BOM dropped: it is no part of
    the first line); exits 2 (``parser.error``) with ``expected @FILE naming <what>`` unless it reads."""
    path = Path(value[1:])
    if not path.is_file():  # (a FIFO is no file here: reading it would wait forever)
        parser.error(f"argument {option}: expected @FILE naming {what}, got {value!r} (not a file)")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        parser.error(
            f"argument {option}: expected @FILE naming {what}, got {value!r} ({type(error).__name__}: {error})"
        )


def output_file(text: str) -> Path:
    """An argparse type: a file path whose directory exists and is writable (checked before any work)."""
    path = Path(text)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"expected a file path in a writable directory, got {text!r}")
    return path


def refuse_overwritten_inputs(
    parser: argparse.ArgumentParser, outputs: dict[str, Optional[Path]], inputs: dict[str, Sequence[str]]
) -> None:
    """Exit 2 (``parser.error``) where an output option names the file an input option reads, or the file of
    an output option before it: writing it (an atomic rename over that path) would replace the input, or the
    other output, with no error. An output is the directory entry it names (its folder resolved: ``./a.tsv``
    is ``a.tsv``, and a link there is replaced, not what it points to), an input the file it reads (links
    followed).

    Args:
        parser (argparse.ArgumentParser): the command's parser, which reports the error.
        outputs (dict[str, Optional[Path]]): option -> the path it writes (None: not given), in the order
            they are written.
        inputs (dict[str, Sequence[str]]): option -> the files it reads (an ``@FILE`` value: its file).
    """
    read = {}  # resolved path -> the option that reads it
    for option, values in inputs.items():
        for value in values:
            read.setdefault(Path(value.removeprefix("@")).resolve(), option)
    written = {}
    for option, path in outputs.items():
        if path is None:
            continue
        entry = path.parent.resolve() / path.name
        owner = read.get(entry) or written.get(entry)
        if owner is not None:
            parser.error(
                f"argument {option}: expected another file than {owner}'s, got {str(path)!r} (it would be written over)"
            )
        written[entry] = option


def write_json(path: Path, value: object, *, allow_nan: bool = False) -> None:
    """Write ``value`` as JSON, atomically; ValueError (before writing) if it holds NaN or infinity,
    which JSON cannot represent, unless ``allow_nan`` (then written as Python's ``NaN``, ``Infinity``:
    e.g. a report whose metric is undefined, which must not be lost)."""
    text = json.dumps(value, indent=2, allow_nan=allow_nan)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def finish_command(result: dict, reasons: list[str], json_path: Optional[Path]) -> dict:
    """A command's last step: each skipped input's reason on stderr, ``result`` written to ``json_path``
    (when given); returns ``result``."""
    for reason in reasons:
        print(f"skipped: {reason}", file=sys.stderr)
    if json_path is not None:
        write_json(json_path, result)
    return result
