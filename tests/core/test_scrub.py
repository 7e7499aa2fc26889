"""Credentials never reach MLflow params or tags."""

from __future__ import annotations

import pytest

from pipeline.core.tracking import scrub_credentials, scrubbed


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("http://user:password@host:5000", "http://user:***@host:5000"),
        ("postgresql+psycopg2://ml:s3cr%40t@db/mlflow", "postgresql+psycopg2://ml:***@db/mlflow"),
        ("https://host/api?token=abc123&x=1", "https://host/api?token=***&x=1"),
        ("s3://b/k?X-Amz-Signature=deadbeef&X-Amz-Date=2026", "s3://b/k?X-Amz-Signature=***&X-Amz-Date=2026"),
        ("https://h/?access_token=a#frag", "https://h/?access_token=***#frag"),
        (
            "track.tracking_uri=http://u:p@h train.epochs=3",
            "track.tracking_uri=http://u:***@h train.epochs=3",
        ),
    ],
)
def test_credentials_are_replaced(raw, clean):
    assert scrub_credentials(raw) == clean
    assert scrub_credentials(clean) == clean  # idempotent


@pytest.mark.parametrize(
    "harmless",
    ["sqlite:///mlruns.db", "http://host:5000", "ssh://git@github.com/x", "train.lr0=0.01", "a=b&c=d"],
)
def test_values_without_credentials_are_unchanged(harmless):
    assert scrub_credentials(harmless) == harmless


def test_scrubbed_turns_every_value_into_clean_text():
    assert scrubbed({"track.tracking_uri": "http://u:pw@h", "train.epochs": 3}) == {
        "track.tracking_uri": "http://u:***@h",
        "train.epochs": "3",
    }
