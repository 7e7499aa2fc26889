"""scripts/benchmark_plans.py's journal: which trials count as the same training, and what a kill
mid-write leaves (the benchmark itself trains for hours; its figures are in the README)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_plans.py"
BUDGET = ["train.epochs=20", "train.imgsz=128", "train.batch=16"]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_plans", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bp = load_script()


@pytest.fixture(scope="module")
def config_of(tmp_path_factory):
    """A trial's configuration on the synthetic data, prepared once."""
    root = tmp_path_factory.mktemp("plans")
    base = bp.prepared_base(root, "synthetic_thermal", BUDGET)
    return lambda config, seed=0, named=None: bp.trial_config(
        root, base, "synthetic_thermal", config, seed, named
    )


@pytest.fixture(scope="module")
def key(config_of):
    return lambda config, seed=0, named=None: bp.trial_key(
        config_of(config, seed, named), "synthetic_thermal"
    )


def test_trials_that_train_the_same_share_a_key(key):
    assert key("auto") == key("auto")
    # under AdamW the plan's lr0 is Ultralytics' 0.01, so this ablation IS auto
    assert key("no_lr_scaling") == key("auto")


def test_a_different_plan_or_seed_is_another_training(key):
    assert len({key("auto"), key("defaults"), key("template"), key("no_warmup_rule"), key("auto", 1)}) == 5


def test_a_fresh_synthetic_set_is_another_training_for_every_configuration(key, tmp_path):
    """--set data.synthetic.seed=1: other frames, so no configuration reuses a seed-0 trial."""
    base = bp.prepared_base(tmp_path, "synthetic_thermal", [*BUDGET, "data.synthetic.seed=1"])
    for config in ("defaults", "template", "auto"):
        cfg = bp.trial_config(tmp_path, base, "synthetic_thermal", config, 0)
        assert bp.trial_key(cfg, "synthetic_thermal") != key(config)


def test_the_template_is_written_by_hand_ultralytics_defaults_where_it_is_silent(config_of):
    template, auto = bp.training_arguments(config_of("template")), bp.training_arguments(config_of("auto"))
    written = bp.TEMPLATES["thermal"]
    assert {key: template[key] for key in written} == written
    silent = {key: value for key, value in bp.ULTRALYTICS.items() if key not in written}
    assert {key: template[key] for key in silent} == silent and template["cos_lr"] is False
    # the plan derives other values there, so a template that borrowed them would fail above
    assert auto["close_mosaic"] != silent["close_mosaic"] and auto["cos_lr"] is True


def trial(config: str, score: float):
    return bp.Trial("synthetic_thermal", config, 0, "test", score, 20, False, 1.0, {"a.jpg": [1, 0, 0]})


def test_a_line_torn_by_a_kill_is_trained_again_and_the_next_one_is_whole(tmp_path):
    journal = tmp_path / "trials.jsonl"
    bp.append_trial(journal, "k1", trial("auto", 0.4))
    with journal.open("a", encoding="utf-8") as stream:
        stream.write('{"key": "k2", "dataset": "synth')  # what a SIGKILL mid-write leaves
    bp.append_trial(journal, "k3", trial("defaults", 0.3))
    done = bp.finished_trials(journal)
    assert list(done) == ["k1", "k3"]
    assert bp.Trial(**done["k1"]) == trial("auto", 0.4) and bp.Trial(**done["k3"]) == trial("defaults", 0.3)


def test_a_variant_trains_the_auto_plan_with_its_overrides(key, config_of):
    variants = bp.parse_variants(
        bp.argparse.ArgumentParser(),
        [["close_mosaic_5", "train.close_mosaic=5"], ["as_auto", "train.close_mosaic=2"]],
    )
    assert config_of("close_mosaic_5", named=variants).train.close_mosaic == 5
    # the rule gives close_mosaic 2 at 20 epochs: that variant is auto's training, the other is not
    assert key("as_auto", named=variants) == key("auto")
    assert key("close_mosaic_5", named=variants) != key("auto")


@pytest.mark.parametrize(
    "given, complaint",
    [
        (["auto", "train.close_mosaic=5"], "the name must be new"),
        (["cm5"], "give one or more Hydra overrides"),
        (["cm5", "close_mosaic"], "'close_mosaic' is not one"),
    ],
)
def test_a_variant_without_a_new_name_or_an_override_is_refused(given, complaint, capsys):
    with pytest.raises(SystemExit):
        bp.parse_variants(bp.argparse.ArgumentParser(), [given])
    assert complaint in capsys.readouterr().err


def test_the_goal_holds_beyond_the_noise_only_when_the_margin_is_far_above_the_spread():
    defaults = [0.20, 0.21, 0.19, 0.20, 0.20]
    clear = bp.goal([0.30, 0.31, 0.29, 0.30, 0.30], defaults, template=[0.25, 0.26, 0.24, 0.25, 0.25])
    assert clear["auto_over_defaults"] == pytest.approx(1.5)
    assert clear["p_above_goal_ratio"] < 0.001 and clear["p_above_template"] < 0.001
    # 1.2x the defaults on the mark: no evidence it is above; a template scoring more: none either
    on_the_mark = bp.goal([0.24, 0.25, 0.23, 0.24, 0.24], defaults, template=[0.30, 0.31, 0.29, 0.30, 0.30])
    assert on_the_mark["p_above_goal_ratio"] == pytest.approx(0.5)
    assert on_the_mark["p_above_template"] > 0.99 and on_the_mark["auto_minus_template"] < 0


def test_defaults_that_learned_nothing_give_an_infinite_ratio_not_a_crash():
    nothing = bp.goal([0.05, 0.06, 0.04], defaults=[0.0, 0.0, 0.0], template=[0.0, 0.01, 0.0])
    assert nothing["auto_over_defaults"] == float("inf") and nothing["p_above_goal_ratio"] < 0.05
