"""The configs redesign of issue 13 (bases, a shared hydra block, names by interpolation) changed no value.

``fixtures/composed_configs_before_13.json`` was dumped at commit b2db82f, before the redesign: every
root config and every group variant composed and resolved, plus the hydra settings each root runs
with. Every value recorded there must still compose to the same value; keys may be added (new
settings), and a value may only change when :data:`CHANGED` names it with its reason.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from utils.config import CONFIG_DIR

BEFORE = json.loads((Path(__file__).parent / "fixtures" / "composed_configs_before_13.json").read_text())

#: "<composition> <dotted key>" -> (value now, why it changed)
CHANGED: dict[str, tuple[Any, str]] = {
    "align_config config.align.pad": (0.0, "issue 16: MTCNN sees the tile as it is, as the standard pipeline does"),
    **{f"sample_config config.sampling.{key}": (value, "issue 14: sample.py's defaults chosen on the testbed; "
                                                       "preset=original restores the original's sampling")
       for key, value in (("sampler", "dpmpp_2m"), ("steps", 15), ("guidance_scale", 3.0), ("amp", "bfloat16"))},
}
#: "<composition>" -> (key prefix, why): a section rewritten as a whole, whose old keys are not compared
REWRITTEN: dict[str, tuple[str, str]] = {
    "demo_config": ("config.demo.", "issue 17: the demo invents people from the testbed checkpoint instead of "
                                    "re-drawing the three people of its photos; no training, new settings"),
}


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict; lists are leaves."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


def composed_now(composition: str) -> dict[str, Any]:
    """The same record as the fixture's for ``"<root> [overrides...]"``, composed from today's configs."""
    name, *overrides = composition.split()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
        h = compose(config_name=name, overrides=overrides, return_hydra_config=True).hydra
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "hydra": {
            "run.dir": OmegaConf.to_container(h.run, resolve=False)["dir"],
            "output_subdir": h.output_subdir,
            # version_base 1.3 runs in place when job.chdir is null (the old tool roots) or false
            "job.chdir": bool(h.job.chdir),
            "job_logging.root.handlers": list(h.job_logging.root.handlers),
        },
    }


@pytest.mark.parametrize("composition", sorted(BEFORE))
def test_every_recorded_value_still_composes(composition: str) -> None:
    before = BEFORE[composition]
    before["hydra"]["job.chdir"] = bool(before["hydra"]["job.chdir"])
    now = dict(leaves(composed_now(composition)))
    differ = []
    skipped = REWRITTEN.get(composition, ("<none>", ""))[0]
    for key, value in leaves(before):
        if key.startswith(skipped):
            continue
        expected = CHANGED.get(f"{composition} {key}", (value, ""))[0]
        if key not in now or now[key] != expected:
            differ.append(f"{key}: before {value!r}, now {now.get(key, '<missing>')!r}")
    assert not differ, f"{composition}:\n" + "\n".join(differ)


#: The argparse defaults of the two scripts that became Hydra apps (read from their code at b2db82f).
OLD_ARGPARSE_DEFAULTS = {
    "evaluate_fr_config": {"fr.backbone.name": "iresnet100", "fr.backbone.net.num_features": 512, "device": "auto",
                           "eval.batch_size": 256, "evaluate_fr.amp": False, "evaluate_fr.output": None,
                           "eval.benchmarks": ["lfw", "agedb_30", "calfw", "cfp_fp", "cplfw"]},
    "split_config": {"split.min_images": 1, "split.identities": None, "split.images_per_identity": None,
                     "split.tile_size": None},
}


@pytest.mark.parametrize("root", sorted(OLD_ARGPARSE_DEFAULTS))
def test_former_argparse_defaults_are_the_config_defaults(root: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name=root), resolve=True)
    now = dict(leaves(cfg))
    assert {key: now[key] for key in OLD_ARGPARSE_DEFAULTS[root]} == OLD_ARGPARSE_DEFAULTS[root]
