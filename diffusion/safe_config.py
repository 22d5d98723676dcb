"""Build objects from an untrusted config, such as the ``.hydra/config.yaml`` of a downloaded run folder.

``hydra.utils.instantiate`` calls whatever a ``_target_`` names, with whatever arguments: a run
folder from elsewhere could name ``torch.load`` (with ``weights_only: false``) or ``os.system``.
:func:`build_allowed` runs nothing the caller did not list:

1. the node is resolved to plain containers (``eps_model: ${model}`` of the published configs
   resolves); anything that resolves to a value other than a number, string, bool, None, list or
   dict is refused;
2. ``_target_`` is the only special key (``_partial_``, ``_args_``, ``_recursive_``, ``_convert_``
   ... are refused), and every ``_target_`` must be a key of the caller's allow-list;
3. only then are the listed callables called, innermost first, with keyword arguments.

Every refusal is one line naming the config file and the dotted key.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

TARGET_KEY = "_target_"
PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeConfigError(ValueError):
    """A config asks for something other than plain values and allow-listed classes."""


def _check(value: Any, allowed: Mapping[str, Callable[..., Any]], source: str, key: str) -> None:
    """Raise unless ``value`` is plain data whose ``_target_`` entries are all allow-listed."""
    if isinstance(value, dict):
        for name, item in value.items():
            where = f"{key}.{name}"
            if not isinstance(name, str):
                raise UnsafeConfigError(f"{source}: {key} has a non-string key {name!r}; refused")
            if name == TARGET_KEY:
                if not isinstance(item, str) or item not in allowed:
                    raise UnsafeConfigError(
                        f"{source}: {where}={item!r} is not a class a run folder may build "
                        f"(allowed: {', '.join(sorted(allowed))}); refused"
                    )
            elif name.startswith("_") and name.endswith("_"):
                raise UnsafeConfigError(f"{source}: {where} is a special instantiation key; only {TARGET_KEY} "
                                        "with plain keyword arguments is accepted; refused")
            else:
                _check(item, allowed, source, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, allowed, source, f"{key}[{index}]")
    elif not isinstance(value, PLAIN_TYPES):
        raise UnsafeConfigError(f"{source}: {key} resolves to a {type(value).__name__}, not a number, string, "
                                "bool, list or dict; refused")


def _build(value: Any, allowed: Mapping[str, Callable[..., Any]], source: str, key: str) -> Any:
    if isinstance(value, list):
        return [_build(item, allowed, source, f"{key}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    kwargs = {name: _build(item, allowed, source, f"{key}.{name}") for name, item in value.items() if name != TARGET_KEY}
    if TARGET_KEY not in value:
        return kwargs
    try:
        return allowed[value[TARGET_KEY]](**kwargs)
    except TypeError as err:
        raise UnsafeConfigError(f"{source}: {key} ({value[TARGET_KEY]}) does not accept these arguments: {err}") from None


def build_allowed(node: Any, allowed: Mapping[str, Callable[..., Any]], source: str | os.PathLike, key: str) -> Any:
    """Build ``node`` (a config node or plain data) calling only the ``allowed`` targets.

    Args:
        node: e.g. ``OmegaConf.load(run / ".hydra/config.yaml").diffusion``.
        allowed: ``{_target_ name: callable}``, e.g. ``{"models.diffusion.unet.ConditionalUNet": ConditionalUNet}``.
        source: the config file, named in errors.
        key: the dotted key of ``node`` in that file, named in errors.
    Raises:
        UnsafeConfigError: anything else (one line naming ``source`` and the key).
    """
    source = str(source)
    try:
        data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as err:
        raise UnsafeConfigError(f"{source}: {key} cannot be resolved: {str(err).splitlines()[0]}") from None
    _check(data, allowed, source, key)
    return _build(data, allowed, source, key)
