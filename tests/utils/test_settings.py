"""utils.settings: the start-up checks of numeric settings and choices."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from utils.settings import Choice, Number, SettingError, check_settings

CFG = OmegaConf.create({"a": {"n": 5, "x": 0.5, "flag": True, "name": "block", "none": None, "sizes": [1, 2]},
                        "m": "???"})


@pytest.mark.parametrize("rule", [
    Number("a.n", low=1, integer=True), Number("a.n", low=5, high=5, integer=True), Number("a.x", low=0, high=1),
    Number("a.x", low=0, low_open=True), Number("a.none", optional=True), Number("a.sizes", low=1, integer=True, each=True),
    Choice("a.flag", (True, False)), Choice("a.name", ("block", "files")), Choice("a.none", (None, "x")),
    Number("a.absent", low=1),  # keys a config does not have are skipped (optional sections)
])
def test_good_values_pass(rule) -> None:
    check_settings(CFG, [rule])


@pytest.mark.parametrize("value, rule, message", [
    (-5, Number("k", low=1, integer=True), "k must be an integer >= 1, found -5"),
    (0, Number("k", low=1, high=65_536, integer=True), "k must be an integer in [1, 65536], found 0"),
    (1e9, Number("k", low=1, high=1e7, integer=True), "k must be an integer in [1, 10000000], found 1000000000.0"),
    (2.5, Number("k", low=1, integer=True), "k must be an integer >= 1, found 2.5"),
    (float("nan"), Number("k", low=-1, high=1, optional=True), "k must be a finite number in [-1, 1] or null, found nan"),
    (float("inf"), Number("k"), "k must be a finite number, found inf"),
    (0.0, Number("k", low=0, low_open=True), "k must be a finite number > 0, found 0.0"),
    (0.0, Number("k", low=0, high=1, low_open=True), "k must be a finite number in (0, 1], found 0.0"),
    (1.5, Number("k", high=1), "k must be a finite number <= 1, found 1.5"),
    (None, Number("k", low=0), "k must be a finite number >= 0, found None"),
    (True, Number("k", low=0), "k must be a finite number >= 0, found True"),  # a bool is not a number
    ("12", Number("k", low=0), "k must be a finite number >= 0, found '12'"),
    ([1, 0], Number("k", low=1, integer=True, each=True),
     "k must be a list of which every element is an integer >= 1, found [1, 0]"),
    (3, Number("k", low=1, integer=True, each=True), "k must be a list of which every element is an integer >= 1, found 3"),
    ("blok", Choice("k", ("block", "files")), "k must be one of block, files, found 'blok'"),
    (1, Choice("k", (True, False)), "k must be one of True, False, found 1"),  # 1 == True, but not a bool
    (None, Choice("k", ("a", "b")), "k must be one of a, b, found None"),
])
def test_bad_values_name_the_key_the_range_and_the_value(value, rule, message: str) -> None:
    with pytest.raises(SettingError) as err:
        check_settings(OmegaConf.create({"k": value}), [rule])
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)


def test_first_broken_rule_wins_and_mandatory_values_must_be_set() -> None:
    with pytest.raises(SettingError, match="^a.n must be an integer >= 10, found 5$"):
        check_settings(CFG, [Number("a.x", low=0), Number("a.n", low=10, integer=True), Number("a.x", low=2)])
    with pytest.raises(SettingError, match=r"^m must be set on the command line \(a finite number >= 0\)$"):
        check_settings(CFG, [Number("m", low=0)])
