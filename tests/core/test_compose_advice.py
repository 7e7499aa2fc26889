"""A misspelt override key gets the key it was meant to be, not Hydra's `+key` (which adds a key
nothing reads)."""

import pytest

from pipeline.core.compose import compose_config
from pipeline.core.errors import ConfigError


@pytest.mark.parametrize("override", ["trian.epochs=3", "train.epoc=3"])
def test_misspelt_key_gets_did_you_mean(override):
    with pytest.raises(ConfigError) as raised:
        compose_config([override])
    message = str(raised.value)
    assert "did you mean train.epochs=3?" in message and repr(override) in message
    assert "+" not in message


def test_other_composition_errors_keep_hydras_message():
    with pytest.raises(ConfigError, match="Could not find 'data/nope'"):
        compose_config(["data=nope"])


def test_group_choice_keys_are_known_and_mapping_entries_are_not_called_misspelt():
    coco = ["data=coco_json", "data.path=x"]
    with pytest.raises(ConfigError, match=r"did you mean data\.coco\.files=a\.json\?"):
        compose_config([*coco, "data.coco.fils.train=a.json"])
    with pytest.raises(ConfigError) as raised:
        compose_config([*coco, "data.coco.files.train=a.json"])  # an entry of the `files` mapping
    assert "did you mean" not in str(raised.value)
    assert "data.coco.files={train: a.json}" in str(raised.value) and "+" not in str(raised.value)


def test_a_coco_split_mapping_is_set_without_a_plus():
    """The form conf/data/coco_json.yaml and the reader's own error show must compose as written."""
    files = "data.coco.files={train: annotations/test.json, val: annotations/val.json}"
    cfg = compose_config(["data=coco_json", "data.path=x", files])
    assert cfg.data.coco.files == {"train": "annotations/test.json", "val": "annotations/val.json"}
    assert compose_config(["data=coco_json", "data.path=x"]).data.coco.files is None  # null: detect
