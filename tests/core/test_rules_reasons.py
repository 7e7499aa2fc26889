"""Recommendation reasons that agree with their values: P2 only for a family that has a P2 config."""

from pipeline.core.compose import CONF_DIR
from pipeline.data.analyze import model_configs, p2_within_family


def test_p2_is_recommended_only_for_a_family_with_a_p2_config():
    configs = model_configs(CONF_DIR / "model")
    kept, reason = p2_within_family("tiny objects", configs, "s", "yolov8")
    assert kept and "model=yolov8s-p2" in reason
    dropped, reason = p2_within_family("tiny objects", configs, "s", "yolo11")  # no yolo11*-p2.yaml
    assert not dropped and "yolo11 has no P2 config at scale s" in reason and "model=yolov8s-p2" in reason
