"""Compose `conf/` with Hydra into the validated `params.yaml` every stage reads.

`dvc exp run -S key=value` composes through DVC's own Hydra integration; `dvc repro` does not,
so `python -m pipeline compose [overrides...]` is the project's way to refresh params.yaml.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.config import PipelineConfig, validate
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
HEADER = (
    "# Composed from conf/ by `python -m pipeline compose` (or `dvc exp run -S ...`).\n"
    "# Do not edit by hand: change conf/ or pass overrides, then compose again.\n"
)


def compose_raw(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """Hydra composition of conf/config.yaml with command-line style overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    # Inside a running Hydra app (a sweep job) the global instance is taken: set it aside.
    running_app = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        advice = misspelling_advice(overrides, conf_dir) if "Could not override" in str(exc) else ""
        raise ConfigError(advice or f"cannot compose {conf_dir} with {list(overrides)}: {exc}") from None
    finally:
        GlobalHydra.instance().hydra = running_app


def misspelling_advice(overrides: Sequence[str], conf_dir: Path) -> str:
    """'did you mean train.epochs' for an override key conf/ lacks: Hydra's own advice, `+trian.epochs`,
    would add a key nothing reads. Empty when no key is unknown (the failure is something else)."""
    choices = [o for o in overrides if "." not in o.partition("=")[0]]  # data=coco_json brings its keys
    known = dotted_keys(OmegaConf.to_container(compose_raw(choices, conf_dir), resolve=False))
    advice = []
    for override in overrides:
        key, _, value = override.partition("=")
        if not value or key.startswith(("+", "~")) or key in known:
            continue
        mapping = leaf_above(key, known)
        if mapping:
            entry = key[len(mapping) + 1 :]
            advice.append(f"override {override!r}: {mapping} is set whole: {mapping}={{{entry}: {value}}}")
            continue
        close = difflib.get_close_matches(key, known, n=1)
        fix = f"did you mean {close[0]}={value}?" if close else "see conf/ for the keys"
        advice.append(f"override {override!r}: {key} is not a key of {conf_dir}; {fix}")
    return "; ".join(advice)


def leaf_above(key: str, known: list[str]) -> str | None:
    """`data.coco.files` for `data.coco.files.train` (an entry of a mapping that conf/ leaves empty):
    the user meant an entry, not a misspelt key."""
    parents = [key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)]
    return next((p for p in parents if p in known and not any(k.startswith(p + ".") for k in known)), None)


def dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every key of a nested mapping, dotted (`train.epochs`), parents included."""
    if not isinstance(tree, dict):
        return []
    keys = []
    for name, value in tree.items():
        keys += [f"{prefix}{name}", *dotted_keys(value, f"{prefix}{name}.")]
    return keys


def compose_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> PipelineConfig:
    """Compose and validate: the typed config for these overrides."""
    return validate(compose_raw(overrides, conf_dir), source=f"conf/ + {list(overrides)}")


def compose_params(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The plain mapping written to params.yaml (validated first, so bad overrides never land)."""
    raw = compose_raw(overrides, conf_dir)
    validate(raw, source=f"conf/ + {list(overrides)}")
    return OmegaConf.to_container(raw, resolve=True)


def write_params(path: Path, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> Path:
    params = compose_params(overrides, conf_dir)
    return write_text(path, HEADER + OmegaConf.to_yaml(OmegaConf.create(params)))
