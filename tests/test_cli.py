"""cli.app: the one-line error policy and the translation of older command lines into Hydra overrides."""
from __future__ import annotations

import pytest
from hydra.errors import InstantiationException

from cli.app import bad_input_of, legacy_arguments, one_line, override_value
from utils.checkpoint import CheckpointError
from utils.config import compose

SPLIT = legacy_arguments(
    flags={"--min-images": "split.min_images", "--identities": "split.identities"},
    positional=("split.input_dir", "split.output_dir"),
)


def test_positional_arguments_and_flags_become_overrides() -> None:
    argv = ["in", "out", "--identities", "3", "split.tile_size=128", "--min-images", "2"]
    assert SPLIT(argv) == ["split.input_dir=in", "split.output_dir=out", "split.min_images=2", "split.identities=3",
                           "split.tile_size=128"]
    assert SPLIT(["split.input_dir=a", "--cfg", "job"]) == ["split.input_dir=a", "--cfg", "job"]  # Hydra's own
    cfg = compose("split_config", SPLIT(["in", "out", "--identities", "3"]))
    assert (cfg.split.input_dir, cfg.split.output_dir, cfg.split.identities) == ("in", "out", 3)


@pytest.mark.parametrize("path", ["plain/dir-1.0", "with space", "a,b", "it's", "back\\slash", "end\\", "q\\'", "[br]"])
def test_paths_survive_the_translation_verbatim(path: str) -> None:
    assert compose("split_config", SPLIT([path, "out"])).split.input_dir == path


def test_override_value_quotes_only_when_needed() -> None:
    assert override_value("outputs/samples_1.5") == "outputs/samples_1.5"
    assert override_value("a b") == "'a b'"
    assert override_value("it's") == "'it\\'s'"
    assert override_value("a\\b c") == "'a\\b c'" and override_value("a b\\") == "'a b\\\\'"


def test_switches_lists_and_groups() -> None:
    translate = legacy_arguments(flags={"--arch": "fr/backbone", "--bin-dir": "eval.bin_dir"},
                                 switches={"--amp": "evaluate_fr.amp"}, lists={"--benchmarks": "eval.benchmarks"})
    overrides = translate(["--arch", "iresnet50", "--amp", "--benchmarks", "lfw", "cfp_fp", "--bin-dir", "b"])
    cfg = compose("evaluate_fr_config", overrides)
    assert cfg.fr.backbone.name == "iresnet50" and cfg.evaluate_fr.amp is True
    assert list(cfg.eval.benchmarks) == ["lfw", "cfp_fp"] and cfg.eval.bin_dir == "b"


def test_what_counts_as_bad_input() -> None:
    assert bad_input_of(ValueError("x")) is not None and bad_input_of(FileNotFoundError("f")) is not None
    assert bad_input_of(CheckpointError("c")) is not None
    assert bad_input_of(RuntimeError("bug")) is None and bad_input_of(KeyError("bug")) is None
    assert bad_input_of(RuntimeError("diverged"), errors=(RuntimeError,)) is not None
    cause = ValueError("norm_groups must divide the width")
    wrapped = InstantiationException("Error in call to target 'x':\nValueError(...)\nfull_key: model")
    wrapped.__cause__ = cause
    assert bad_input_of(wrapped) is cause  # the model's own message, not Hydra's wrapper
    bug = InstantiationException("Error in call to target 'x'")
    bug.__cause__ = AttributeError("bug")
    assert bad_input_of(bug) is None


def test_one_line() -> None:
    assert one_line(ValueError("first\n  second\n    object_type=dict")) == "first; second"
    assert one_line(ValueError("Could not override 'a'.\nTo append use +a=1")) == "Could not override 'a'. To append use +a=1"
    assert one_line(ValueError("")) == "ValueError"
