"""The one entry-point wrapper of the project's scripts: a Hydra app whose bad input ends in one line.

    @hydra_app("align_config")
    def main(cfg: DictConfig) -> None:
        align_from_config(cfg)

* Bad input (:data:`BAD_INPUT`: a missing or damaged file, a setting out of range, a config key or
  option that does not exist) prints ``error: <message>`` as one line on stderr and exits with status
  2, whether the task raised it or Hydra failed to compose the config. Hydra would otherwise wrap
  both in its own traceback.
* Any other exception keeps its full traceback (exit status 1): it is a bug to report.
* ``aliases`` turns an older command line (argparse flags, positional arguments) into Hydra overrides.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from utils.checkpoint import CheckpointError
from utils.config import CONFIG_DIR

EXIT_BAD_INPUT = 2
#: Exceptions that mean "the input is wrong" (ValueError covers SettingError and the stages' own errors).
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, OSError, CheckpointError, OmegaConfBaseException)

Task = Callable[[DictConfig], Any]


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, with the OmegaConf reason Hydra keeps as its cause."""
    text = str(err)
    if isinstance(err, HydraException) and isinstance(err.__cause__, OmegaConfBaseException):
        text += "\n" + str(err.__cause__)
    message = ""
    for line in (line.strip() for line in text.splitlines()):
        if line and "object_type=" not in line:
            message += (" " if message.endswith((".", ":", ";")) else "; ") + line if message else line
    return message or type(err).__name__


def bad_input_of(err: BaseException, errors: tuple[type[BaseException], ...] = ()) -> BaseException | None:
    """The exception to report as bad input (``err`` or, for a failed ``instantiate``, its cause), else None."""
    if isinstance(err, InstantiationException):
        return bad_input_of(err.__cause__, errors) if err.__cause__ is not None else None
    return err if isinstance(err, BAD_INPUT + errors) else None


def exit_bad_input(err: BaseException) -> None:
    """Write ``error: <message>`` on stderr and exit with :data:`EXIT_BAD_INPUT`."""
    sys.stderr.write(f"error: {one_line(err)}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_BAD_INPUT)


def hydra_app(
    config_name: str,
    errors: tuple[type[BaseException], ...] = (),
    aliases: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[Task], Callable[[], None]]:
    """Decorate a script's task function into its ``main()``: ``configs/<config_name>.yaml`` + the error policy.

    Args:
        config_name: the root config.
        errors: further exception types that mean bad input for this script.
        aliases: rewrites ``sys.argv[1:]`` (an older command line) into Hydra overrides first.
    """

    def decorate(task: Task) -> Callable[[], None]:
        started = False

        @functools.wraps(task)  # Hydra names the job (and main.py's log file) after the script
        def guarded(cfg: DictConfig) -> Any:
            nonlocal started
            started = True
            try:
                return task(cfg)
            except Exception as err:
                reported = bad_input_of(err, errors)
                if reported is None:
                    raise
                exit_bad_input(reported)

        def main() -> None:
            if aliases is not None:
                sys.argv[1:] = aliases(sys.argv[1:])
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own traceback
            try:
                hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(guarded)()
            except HydraException as err:
                if started:  # raised by the task and not bad input: keep the traceback
                    raise
                exit_bad_input(err)  # composing the config failed: unknown key, option or override syntax
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return main

    return decorate


def override_value(value: str) -> str:
    """``value`` as a Hydra override value: plain when safe, else single-quoted (spaces, commas, brackets...)."""
    if re.fullmatch(r"[\w./:@+-]+", value):
        return value
    # In Hydra's quoted strings a backslash is literal, except in a run right before a quote (or the closing
    # quote), which must be doubled; a quote is escaped by one backslash.
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def legacy_arguments(
    flags: Mapping[str, str],
    positional: Sequence[str] = (),
    switches: Mapping[str, str] | None = None,
    lists: Mapping[str, str] | None = None,
) -> Callable[[list[str]], list[str]]:
    """An ``aliases`` function for :func:`hydra_app` that keeps an argparse command line working.

    Args:
        flags: ``--flag value`` -> ``key=value`` (``key`` may be a config group such as ``fr/backbone``).
        positional: keys for the leading words without ``=`` (e.g. ``input_dir output_dir``).
        switches: ``--flag`` -> ``key=true``.
        lists: ``--flag a b c`` -> ``key=[a,b,c]``.
    Everything else (Hydra overrides and flags) is passed on unchanged, after the translated overrides.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key)
    for flag, key in (switches or {}).items():
        parser.add_argument(flag, dest=key, action="store_const", const="true")
    for flag, key in (lists or {}).items():
        parser.add_argument(flag, dest=key, nargs="+")

    def translate(argv: list[str]) -> list[str]:
        words = list(argv)
        leading = []
        while words and len(leading) < len(positional) and "=" not in words[0] and not words[0].startswith(("-", "+", "~")):
            leading.append(words.pop(0))
        known, rest = parser.parse_known_args(words)
        overrides = [f"{key}={override_value(value)}" for key, value in zip(positional, leading)]
        for key, value in vars(known).items():
            if isinstance(value, list):
                overrides.append(f"{key}=[{','.join(override_value(v) for v in value)}]")
            elif value is not None:
                overrides.append(f"{key}={override_value(value)}")
        return overrides + rest

    return translate
