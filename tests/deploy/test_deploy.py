"""Deploy (TensorRT) on a machine without TensorRT or CUDA: what can and must work here.

The engine build needs the device; everything around it is tested on CPU: the stage stopping at
once with a message naming what is missing (in-process; a plain `dvc repro` skips the frozen stage),
calibration batching and cache keying, engine metadata and the refusal of a foreign engine, and
the trtexec command lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.artifacts import Artifacts, metadata_path
from pipeline.core.errors import MissingDependencyError
from pipeline.core.io import read_json, write_json
from pipeline.deploy import device as deploy
from pipeline.deploy import export
from pipeline.model import tensorrt as trt
from tests._tiny import IMGSZ

PROJECT_ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = {
    "rule": "best F1",
    "classes": {
        str(i): {"name": n, "conf": c} for i, (n, c) in enumerate([("person", 0.4), ("animal", 0.3)])
    },
}


@pytest.fixture(scope="module")
def exported(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    export.main(["--params", str(project.params(out, "export.formats=[onnx]"))])
    return out


def source(cfg, dynamic: bool = False) -> deploy.OnnxSource:
    meta = read_json(metadata_path(Artifacts.of(cfg).onnx))
    shape = (cfg.benchmark.batch if dynamic else 1, 3, IMGSZ, IMGSZ)
    return deploy.OnnxSource(Artifacts.of(cfg).models / "model.onnx", shape, dynamic, meta)


# ---- no TensorRT here: stop at once and say so ------------------------------------------------------


def test_stage_stops_at_once_naming_what_is_missing(project, exported):
    assert trt.missing_requirements() == [
        "the `tensorrt` Python module (TensorRT 10)",
        "a CUDA device (torch.cuda.is_available() is False)",
    ]
    with pytest.raises(MissingDependencyError) as stopped:
        deploy.main(["--params", str(project.params(exported))])
    message = str(stopped.value)
    assert "this machine lacks the `tensorrt` Python module (TensorRT 10) and a CUDA device" in message
    assert "Run it on the target (a Jetson or an RTX host)" in message
    assert "dvc commit -f deploy/dvc.yaml:deploy" in message
    onnx = exported / "export" / "models" / "model.onnx"
    assert (
        f"trtexec --onnx={onnx} --saveEngine={exported}/export/tensorrt/engines/model.fp16.engine" in message
    )
    assert not (exported / "export" / "tensorrt").exists()  # nothing was started


def test_training_host_dvc_repro_never_runs_the_frozen_deploy_stage(project, exported, tmp_path):
    """deploy/dvc.yaml is collected by every `dvc repro` of the project; frozen, it is skipped on the
    training host (which has no TensorRT), and `dvc commit` records its outputs on the device."""
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "deploy" / "dvc.yaml", repo / "deploy" / "dvc.yaml")
    relative = (
        "paths.export=models/export",
        "paths.prepared=data/prepared",
        "paths.evaluation=reports/evaluate",
    )
    shutil.copy(project.params(exported, *relative), repo / "params.yaml")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: echo trained > model.txt\n    outs: [model.txt]\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)

    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (repo / "model.txt").exists()
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert "'deploy/dvc.yaml:deploy' is frozen" in status.stdout + status.stderr
    assert not (repo / "models" / "export" / "tensorrt").exists()


# ---- the trtexec command lines ----------------------------------------------------------------------


def test_trtexec_commands_for_each_precision():
    onnx, engine = Path("m/model.onnx"), Path("e/model.fp16.engine")
    static = trt.Profile((1, 3, 640, 640), dynamic=False)
    assert trt.trtexec_command(onnx, engine, "fp16", 4, static) == [
        "trtexec",
        "--onnx=m/model.onnx",
        "--saveEngine=e/model.fp16.engine",
        "--memPoolSize=workspace:4096M",
        "--fp16",
    ]
    dynamic = trt.Profile((8, 3, 640, 640), dynamic=True, opt_batch=4)
    int8 = trt.trtexec_command(onnx, engine, "int8", 2, dynamic, calibration_cache=Path("c"))
    assert int8[3:] == [
        "--memPoolSize=workspace:2048M",
        "--minShapes=images:1x3x640x640",
        "--optShapes=images:4x3x640x640",
        "--maxShapes=images:8x3x640x640",
        "--fp16",
        "--int8",
        "--calib=c",
    ]
    assert "--fp16" not in trt.trtexec_command(onnx, engine, "fp32", 4, static)


def test_dynamic_onnx_engines_cover_the_benchmark_and_calibration_batches(project, exported):
    cfg = project.config(exported, "benchmark.batch=4", "export.tensorrt.calibration_batch=8")
    dynamic = source(cfg, dynamic=True)
    dynamic = deploy.OnnxSource(dynamic.path, (8, 3, IMGSZ, IMGSZ), True, dynamic.meta)
    assert deploy.profile(cfg, dynamic, "int8") == trt.Profile((8, 3, IMGSZ, IMGSZ), True, opt_batch=8)
    assert deploy.profile(cfg, dynamic, "fp16").opt_batch == 1  # tuned for the camera's batch of 1
    assert deploy.onnx_source(cfg).shape == (1, 3, IMGSZ, IMGSZ)  # the exported ONNX is static


def test_commands_follow_the_exported_onnx(project, exported):
    cfg = project.config(exported, "export.tensorrt.precisions=[fp16]", "export.tensorrt.workspace_gb=2")
    (command,) = deploy.commands(cfg, deploy.onnx_source(cfg))
    engine = exported / "export" / "tensorrt" / "engines" / "model.fp16.engine"
    assert command == (
        f"trtexec --onnx={exported}/export/models/model.onnx --saveEngine={engine} "
        "--memPoolSize=workspace:2048M --fp16"
    )


# ---- INT8 calibration: batching and cache keying ----------------------------------------------------


def test_calibration_batches_come_full_from_the_train_split(project, exported):
    cfg = project.config(
        exported, "export.tensorrt.calibration_images=10", "export.tensorrt.calibration_batch=4"
    )
    data = deploy.calibration_set(cfg, source(cfg, dynamic=True))
    assert len(data.images) == 10 and all("/images/train/" in str(p) for p in data.images)
    batches = list(data.batches())
    assert len(batches) == 2  # 10 images in batches of 4: the short remainder is left out
    assert all(b.shape == (4, 3, IMGSZ, IMGSZ) and b.dtype == np.float32 for b in batches)
    assert batches[0].min() >= 0.0 and batches[0].max() <= 1.0
    static = deploy.calibration_set(cfg, source(cfg, dynamic=False))
    assert static.batch_size == 1  # a static ONNX is calibrated at its own batch


def test_calibration_images_are_spread_over_the_split():
    images = [Path(f"{i:03d}.png") for i in range(100)]
    picked = trt.pick_calibration_images(list(reversed(images)), 5)
    assert [p.name for p in picked] == ["000.png", "025.png", "050.png", "074.png", "099.png"]
    assert trt.pick_calibration_images(images[:3], 5) == tuple(images[:3])


def test_cache_key_changes_with_the_images_tensorrt_and_onnx(tmp_path):
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(bytes([i]) * 10)
    digest = trt.images_hash(tuple(images))
    key = trt.cache_key(digest, "10.3.0", "onnx-a", 8)
    assert key == trt.cache_key(trt.images_hash(tuple(images)), "10.3.0", "onnx-a", 8)
    assert key != trt.cache_key(digest, "10.7.0", "onnx-a", 8)
    assert key != trt.cache_key(digest, "10.3.0", "onnx-b", 8)
    images[1].write_bytes(b"changed")
    assert trt.images_hash(tuple(images)) != digest


def test_a_stale_cache_is_never_read(tmp_path):
    old = trt.CalibrationCache(tmp_path, trt.cache_key("images-a", "10.3.0", "onnx", 8))
    old.write(b"scales for images-a")
    new = trt.CalibrationCache(tmp_path, trt.cache_key("images-b", "10.3.0", "onnx", 8))
    assert new.read() is None and old.read() == b"scales for images-a"
    assert new.path != old.path and new.path.parent == old.path.parent


def test_calibrator_serves_batches_then_signals_the_end_and_keeps_the_cache(tmp_path, project, exported):
    """The calibrator's protocol, on a plain base class and CPU tensors instead of TensorRT and CUDA."""
    cfg = project.config(
        exported, "export.tensorrt.calibration_images=6", "export.tensorrt.calibration_batch=2"
    )
    data = deploy.calibration_set(cfg, source(cfg, dynamic=True))
    cache = trt.CalibrationCache(tmp_path, "k" * 64)
    calibrator = trt.calibrator_class(object)(data, cache, torch.from_numpy)
    assert calibrator.get_batch_size() == 2
    pointers = [calibrator.get_batch(["images"]) for _ in range(4)]
    assert [p is None for p in pointers] == [False, False, False, True]
    assert pointers[2] == [calibrator.current.data_ptr()] and tuple(calibrator.current.shape) == (
        2,
        3,
        64,
        64,
    )
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2"))
    assert trt.calibrator_class(object)(data, cache, torch.from_numpy).read_calibration_cache() == (
        b"TRT-100300-EntropyCalibration2"
    )


# ---- engine metadata and the refusal ----------------------------------------------------------------


def orin(**changes) -> trt.DeviceInfo:
    return trt.DeviceInfo(
        **{"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0", **changes}
    )


def test_engine_metadata_round_trip(project, exported, tmp_path):
    cfg = project.config(exported)
    meta = deploy.engine_metadata("int8", source(cfg), orin(), {"images": 128, "cache_key": "abc"})
    engine = tmp_path / "model.int8.engine"
    trt.write_metadata(engine, meta)
    written = read_json(tmp_path / "model.int8.engine.json")
    assert written["gpu_name"] == "Orin" and written["compute_capability"] == "8.7"
    assert written["tensorrt_version"] == "10.3.0" and written["precision"] == "int8"
    assert written["input_shape"] == [1, 3, IMGSZ, IMGSZ] and written["names"] == [
        "person",
        "animal",
        "vehicle",
    ]
    assert (
        written["source_onnx_sha256"]
        == read_json(Artifacts.of(cfg).models / "model.onnx.json")["sha256_file"]
    )
    assert trt.read_metadata(engine) == meta
    assert meta.model_info().imgsz == IMGSZ


def test_engine_metadata_carries_the_evaluated_class_thresholds(project, exported, tmp_path):
    cfg = project.config(exported, f"paths.evaluation={tmp_path}")
    assert deploy.class_thresholds(cfg) is None  # not evaluated: said as null, not made up
    write_json(tmp_path / "thresholds.json", THRESHOLDS)
    thresholds = deploy.class_thresholds(cfg)
    assert thresholds == {"person": 0.4, "animal": 0.3}
    meta = deploy.engine_metadata("fp16", source(cfg), orin(), None, thresholds)
    assert meta.as_dict()["class_thresholds"] == {"person": 0.4, "animal": 0.3}


def test_loading_refuses_an_engine_built_for_another_gpu_or_tensorrt(project, exported, tmp_path):
    cfg = project.config(exported)
    meta = deploy.engine_metadata("fp16", source(cfg), orin(), None)
    engine = tmp_path / "model.fp16.engine"
    assert trt.compatibility_problem(meta, orin()) is None
    trt.check_compatible(engine, meta, orin())

    other = orin(gpu_name="NVIDIA GeForce RTX 3080", compute_capability="8.6", tensorrt_version="10.7.0")
    with pytest.raises(trt.EngineMismatchError) as refused:
        trt.check_compatible(engine, meta, other)
    assert str(refused.value) == (
        f"refusing to load {engine}: it was built for GPU 'Orin' (this machine: 'NVIDIA GeForce RTX 3080'), "
        "compute capability '8.7' (this machine: '8.6'), TensorRT '10.3.0' (this machine: '10.7.0'). "
        "TensorRT engines only run on the GPU model and TensorRT version that built them; rebuild it here "
        "with `python -m pipeline deploy`."
    )
    only_trt = trt.compatibility_problem(meta, orin(tensorrt_version="10.4.0"))
    assert only_trt == "it was built for TensorRT '10.3.0' (this machine: '10.4.0')"


def test_an_engine_without_metadata_is_refused(tmp_path):
    with pytest.raises(trt.EngineMismatchError, match=r"no metadata \(model.fp16.engine.json\) beside it"):
        trt.read_metadata(tmp_path / "model.fp16.engine")


def test_tensorrt_11_is_refused_with_the_reason():
    trt.require_tensorrt_10("10.3.0")
    with pytest.raises(MissingDependencyError, match="TensorRT 11 removed"):
        trt.require_tensorrt_10("11.0.1")
