"""Benchmark stage: real sessions of every exported format of a tiny model, timed on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.io import read_json
from pipeline.deploy import benchmark, export
from pipeline.deploy.timing import end_to_end_fps, peak_memory, summarise_timing, time_in_turn
from pipeline.model.inference import cpu_supports, open_runner


@pytest.fixture(scope="module")
def exported(project, tmp_path_factory):
    """Stage outputs of a real export (ONNX, TorchScript, OpenVINO) for the benchmark to find."""
    out = tmp_path_factory.mktemp("bench")
    export.main(["--params", str(project.params(out, "export.formats=[onnx,torchscript,openvino]"))])
    return out


def test_stage_measures_every_format_at_both_batches(project, exported):
    params = project.params(
        exported, "benchmark.runs=4", "benchmark.warmup=1", "benchmark.batch=2", "hardware.target_fps=1"
    )
    assert benchmark.main(["--params", str(params)]) == 0
    out = exported / "benchmark"
    result = read_json(out / "details.json")

    names = {"pytorch", "onnx", "torchscript", "openvino"} | (
        {"openvino-bf16"} if cpu_supports("bf16") else set()
    )
    assert set(result["formats"]) == names
    assert (result["threads"], result["batches"], result["runs"]) == (2, [1, 2], 4)
    for name, entry in result["formats"].items():
        timing = entry["batch_1"]
        assert 0 < timing["p50_ms"] <= timing["p95_ms"] <= timing["p99_ms"]
        assert timing["throughput_ips"] == pytest.approx(1000 / timing["mean_ms"], rel=0.01)
        assert timing["preprocess_p50_ms"] > 0 and timing["postprocess_p50_ms"] > 0
        assert 0.0 <= entry["mAP50-95"] <= 1.0 and entry["peak_memory_mb"] >= 0
        assert entry["target_fps_met"] is True, name  # 1 fps at 64 px
    for name in ("pytorch", "torchscript"):  # any batch runs
        assert result["formats"][name]["batch_2"]["throughput_ips"] > 0
    assert "fixed at 1" in result["formats"]["onnx"]["batch_2"]["skipped"]  # static export
    assert result["skipped"]["tensorrt"].startswith("no engine")
    assert "VmHWM" in result["memory_method"]
    headline = read_json(out / "benchmark.json")  # DVC metrics: the fastest format's speed only
    fastest = min(names, key=lambda name: result["formats"][name]["batch_1"]["p50_ms"])
    assert set(headline) == {"p50_ms", "fps"} and result["fastest"]["name"] == fastest
    assert (
        headline["p50_ms"] == result["formats"][fastest]["batch_1"]["p50_ms"] == result["fastest"]["p50_ms"]
    )
    reference = result["formats"]["pytorch"]["batch_1"]["p50_ms"]
    assert result["fastest"]["vs_pytorch"] == pytest.approx(headline["p50_ms"] / reference, abs=1e-3)

    table = (out / "benchmark.md").read_text()
    assert "| onnx | 1 |" in table and "onnx, batch 2: not measured" in table
    assert (out / "latency_vs_accuracy.png").stat().st_size > 0

    import mlflow

    run = mlflow.MlflowClient(project.tracking_uri).get_run(
        read_json(project.train_report / "run.json")["run_id"]
    )
    assert run.data.metrics["benchmark/onnx/b1_p50_ms"] == result["formats"]["onnx"]["batch_1"]["p50_ms"]


def test_every_runtime_gets_the_configured_thread_count(project, exported):
    import torch

    models = exported / "export" / "models"
    open_runner(project.train / "weights" / "best.pt", threads=1)
    assert torch.get_num_threads() == 1
    onnx = open_runner(models / "model.onnx", threads=1)
    assert onnx.session.get_session_options().intra_op_num_threads == 1
    openvino = open_runner(models / "model_openvino_model", threads=1)
    assert openvino.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(openvino.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    torch.set_num_threads(2)


def test_timing_statistics():
    samples = [(0.001, t / 1000, 0.002) for t in (10, 20, 30, 40, 50)]
    timing = summarise_timing(4, samples)
    assert (timing.mean_ms, timing.p50_ms, timing.preprocess_p50_ms, timing.postprocess_p50_ms) == (
        30,
        30,
        1,
        2,
    )
    assert timing.p95_ms == pytest.approx(48) and timing.p99_ms == pytest.approx(49.6)
    assert timing.throughput_ips == pytest.approx(4 * 1000 / 30, abs=0.01)
    assert end_to_end_fps(timing) == pytest.approx(1000 / 33, abs=0.01)


def test_peak_memory_sees_a_temporary_allocation():
    with peak_memory() as growth:
        block = np.ones(60 * 1024 * 1024 // 8)  # 60 MB, freed before the block ends
        del block
    assert growth[0] >= 55


class Recorded:
    """A real runner that notes each call in a shared log."""

    def __init__(self, runner, log):
        self.runner, self.log = runner, log
        self.name, self.path, self.batch = runner.name, runner.path, runner.batch

    def infer(self, batch):
        self.log.append(self.name)
        return self.runner.infer(batch)


def test_formats_are_timed_in_turn(project, exported):
    """Round-robin: each round runs every format once, so load from elsewhere hits all formats alike."""
    from pipeline.model.info import read_model_info
    from pipeline.model.scoring import load_images, read_split

    info = read_model_info(project.train / "weights" / "best.pt")
    images = load_images(read_split(project.prepared, "val", 2), info.channels)
    log: list[str] = []
    models = exported / "export" / "models"
    runners = [Recorded(open_runner(models / name, 2), log) for name in ("model.onnx", "model.torchscript")]
    timed = time_in_turn(runners, images, info, size=1, runs=3)
    assert log == ["onnx", "torchscript"] * 3
    assert {name: len(samples) for name, samples in timed.items()} == {"onnx": 3, "torchscript": 3}
