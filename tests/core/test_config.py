"""Composition and validation of conf/, and the params.yaml drift check."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.core import config, data_config, deploy_config
from pipeline.core.compose import CONF_DIR, compose_config, compose_params
from pipeline.core.config import load_params, validate
from pipeline.core.errors import ConfigError
from tests.conftest import PROJECT_ROOT


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_committed_params_match_a_fresh_composition():
    committed = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "params.yaml"))
    assert committed == compose_params([]), (
        "params.yaml differs from conf/: run `python -m pipeline compose` and commit the result"
    )


SMALL_GROUPS = ("data", "sensor", "hardware", "classes")  # every model is composed once on its own


def option_pairs(combination: tuple[str, ...]) -> set[tuple[tuple[int, str], tuple[int, str]]]:
    return set(itertools.combinations(enumerate(combination), 2))


def all_pairs(groups: list[list[str]]) -> list[tuple[str, ...]]:
    """Combinations that together put every option of each group beside every option of every other
    group (a greedy pairwise covering array): about 60 compositions instead of the product's 448."""
    product = list(itertools.product(*groups))
    uncovered = set().union(*map(option_pairs, product))
    chosen = []
    while uncovered:
        best = max(product, key=lambda combination: len(option_pairs(combination) & uncovered))
        chosen.append(best)
        uncovered -= option_pairs(best)
    return chosen


def test_every_group_option_composes_and_validates():
    """Groups write their own sections and each section validates alone, so every pair of options
    composed side by side, plus every model once, covers what any combination could break."""
    user_data = {"yolo_dir", "coco_json", "voc_xml"}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for choice in all_pairs([options(g) for g in SMALL_GROUPS]):
            overrides = [f"{g}={c}" for g, c in zip(SMALL_GROUPS, choice, strict=True)]
            if choice[0] in user_data:
                overrides.append("data.path=/datasets/mine")
            validate(compose(config_name="config", overrides=overrides), source=str(overrides))
        for model in options("model"):
            cfg = validate(compose(config_name="config", overrides=[f"model={model}"]))
            assert cfg.model.name == model


def test_the_pairwise_combinations_cover_every_pair_and_are_few():
    groups = [options(g) for g in SMALL_GROUPS]
    chosen = all_pairs(groups)
    wanted = set().union(*map(option_pairs, itertools.product(*groups)))
    assert set().union(*map(option_pairs, chosen)) == wanted
    # a covering needs at least the two largest groups' product (data x hardware); greedy stays near it
    assert len(chosen) <= 1.5 * len(groups[0]) * len(groups[2])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_templates_compose(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    assert cfg.model.name and cfg.hardware.name


def test_model_architectures_exist_in_ultralytics():
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import yaml_model_load

    for model in options("model"):
        cfg = compose_config([f"model={model}"])
        assert yaml_model_load(cfg.model.architecture)["nc"] == 80, model


def test_unknown_group_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        compose_config(["model=yolo99x"])
    assert "model/yolo99x" in str(error.value) and "yolo11n" in str(error.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.imgsz=100", "train.imgsz=100"),
        ("classes.names=[]", "classes.names"),
        ("classes.names=[a,a]", "unique"),
        ("train.lr0=-1", "train.lr0"),
        ("+train.lr00=0.1", "unknown key 'train.lr00'"),
        ("train.amp=maybe", "train.amp"),
        ("hardware.gpus=two", "hardware.gpus"),
        ("sensor.name=sonar", "sensor.name"),
    ],
)
def test_invalid_values_fail_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as error:
        compose_config([override])
    assert expected in str(error.value)


def test_user_dataset_needs_a_path():
    with pytest.raises(ConfigError) as error:
        compose_config(["data=yolo_dir"])
    assert "data.path" in str(error.value)


def test_load_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(OmegaConf.to_yaml(OmegaConf.create({**compose_params([]), "seed": "zero"})))
    with pytest.raises(ConfigError) as error:
        load_params(bad)
    assert str(bad) in str(error.value) and "seed" in str(error.value)


def test_conf_is_the_one_source_of_every_default():
    """The schema types and checks values; conf/ gives them. A default written in both drifts."""
    with_defaults = [
        f"{cls.__name__}.{f.name}"
        for module in (config, data_config, deploy_config)
        for cls in vars(module).values()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    # the readers' own sections are absent (None) for other formats: structure, not a default value
    assert sorted(with_defaults) == ["DataConfig.coco", "DataConfig.synthetic", "DataConfig.voc"]


def test_a_format_without_its_section_is_refused():
    with pytest.raises(ConfigError, match=r"data\.voc"):
        compose_config(["data=yolo_dir", "data.path=/data", "data.format=voc"])
