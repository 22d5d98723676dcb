"""Start-up validation of a script's settings: every number finite and in range, every choice known.

Each stage lists its rules beside the code that consumes the settings and calls :func:`check_settings`
before any work, so a bad value ends the run at once with one line naming the key::

    check_settings(cfg, [Number("training.steps", low=1, integer=True), Choice("align.output", ("block", "files"))])
    # SettingError: training.steps must be an integer >= 1, found -5
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue


class SettingError(ValueError):
    """A setting is missing, of the wrong type, not finite or out of its range."""


@dataclass(frozen=True)
class Number:
    """``key`` holds a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    ``integer``: an int (not a bool, not ``1e9`` written as a float); ``optional``: null is allowed;
    ``each``: the setting is a list and every element obeys the rule.
    """

    key: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    optional: bool = False
    low_open: bool = False
    each: bool = False

    def expected(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            kind += f" in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"
        elif self.low is not None:
            kind += f" {'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            kind += f" <= {_number(self.high)}"
        kind = f"a list of which every element is {kind}" if self.each else kind
        return kind + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        values = list(value) if self.each and isinstance(value, (list, tuple, ListConfig)) else None
        if self.each:
            return values is not None and all(self._accepts_one(v) for v in values)
        return self._accepts_one(value)

    def _accepts_one(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (self.integer and not isinstance(value, int)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


@dataclass(frozen=True)
class Choice:
    """``key`` holds one of ``choices`` (null only when ``None`` is one of them)."""

    key: str
    choices: Sequence[Any]

    def expected(self) -> str:
        return "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)

    def accepts(self, value: Any) -> bool:
        return any(value is c if c is None or isinstance(c, bool) else value == c for c in self.choices)


def check_settings(cfg: DictConfig, rules: Iterable[Number | Choice]) -> None:
    """Raise :class:`SettingError` (one line: key, what was expected, what was found) at the first broken rule.

    A rule whose key is absent from ``cfg`` is skipped (optional sections); a key set to ``???`` is an error.
    """
    for rule in rules:
        try:
            value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            raise SettingError(f"{rule.key} must be set on the command line ({rule.expected()})") from None
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if not rule.accepts(value):
            raise SettingError(f"{rule.key} must be {rule.expected()}, found {value!r}")


_ABSENT = object()


def require(ok: bool, key: str, expected: str, value: object) -> None:
    """For settings objects that check themselves: raise :class:`SettingError` naming ``key`` unless ``ok``."""
    if not ok:
        raise SettingError(f"{key} must be {expected}, found {value!r}")


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(x: float) -> str:
    """``1e7`` -> ``10000000``, ``0.5`` -> ``0.5`` (bounds as a user would type them)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
