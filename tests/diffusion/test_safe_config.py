"""diffusion.safe_config: only allow-listed classes with plain arguments are built; everything else is refused by key."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from diffusion.safe_config import UnsafeConfigError, build_allowed


@dataclass
class Inner:
    width: int
    names: list


@dataclass
class Outer:
    inner: Inner
    scale: float = 1.0


ALLOWED = {"tests.Inner": Inner, "tests.Outer": Outer}


@pytest.fixture
def object_resolver() -> Iterator[None]:
    """A resolver that returns a callable object: an interpolation that resolves to something other than data."""
    OmegaConf.register_new_resolver("test_callable", lambda: print)
    yield
    OmegaConf.clear_resolver("test_callable")


def test_builds_nested_targets_with_interpolations() -> None:
    cfg = OmegaConf.create({"size": 4, "part": {"_target_": "tests.Inner", "width": "${size}", "names": ["a", "b"]},
                            "model": {"_target_": "tests.Outer", "inner": "${part}", "scale": 0.5}})
    built = build_allowed(cfg.model, ALLOWED, "run/.hydra/config.yaml", "model")
    assert built == Outer(Inner(4, ["a", "b"]), 0.5)
    assert type(built.inner.names) is list  # plain containers, not OmegaConf nodes
    assert build_allowed({"a": [1, {"b": None}]}, ALLOWED, "x.yaml", "root") == {"a": [1, {"b": None}]}


@pytest.mark.parametrize(("node", "key"), [
    ({"_target_": "tests.Outer", "inner": {"_target_": "torch.load", "f": "x.pkl", "weights_only": False}},
     "model.inner._target_='torch.load'"),
    ({"_target_": "os.system", "command": "touch x"}, "model._target_='os.system'"),
    ({"_target_": "tests.Inner", "_partial_": True, "width": 1, "names": []}, "model._partial_ is a special"),
    ({"_target_": "tests.Inner", "_args_": [1, []]}, "model._args_ is a special"),
    ({"_target_": "tests.Inner", "width": 1, "names": [{"_target_": "builtins.eval", "_args_": ["1"]}]},
     "model.names[0]._target_='builtins.eval'"),
    ({"_target_": "tests.Inner", "width": 1, "names": [], "_recursive_": False}, "model._recursive_ is a special"),
    ({"_target_": 3}, "model._target_=3 is not"),
])
def test_refuses_everything_else_naming_the_key(node: dict[str, Any], key: str) -> None:
    with pytest.raises(UnsafeConfigError) as err:
        build_allowed(OmegaConf.create({"model": node}).model, ALLOWED, "run/.hydra/config.yaml", "model")
    message = str(err.value)
    assert message.startswith("run/.hydra/config.yaml: ") and key in message and "\n" not in message, message


@pytest.mark.usefixtures("object_resolver")
def test_interpolation_that_resolves_to_an_object_is_refused() -> None:
    cfg = OmegaConf.create({"model": {"_target_": "tests.Inner", "width": "${test_callable:}", "names": []}})
    with pytest.raises(UnsafeConfigError, match=r"config.yaml: model.width resolves to a builtin_function_or_method"):
        build_allowed(cfg.model, ALLOWED, Path("config.yaml"), "model")


def test_unresolvable_interpolation_and_bad_arguments_are_one_line() -> None:
    cfg = OmegaConf.create({"model": {"_target_": "tests.Inner", "width": "${nowhere}", "names": []}})
    with pytest.raises(UnsafeConfigError, match=r"^c.yaml: model cannot be resolved: "):
        build_allowed(cfg.model, ALLOWED, "c.yaml", "model")
    with pytest.raises(UnsafeConfigError, match=r"^c.yaml: model \(tests.Inner\) does not accept these arguments"):
        build_allowed({"_target_": "tests.Inner", "depth": 2}, ALLOWED, "c.yaml", "model")
