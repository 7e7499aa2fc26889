"""TensorRT INT8 -> FP16 fallback, the part a CPU can check: which layers a failed INT8 engine gets
pinned to FP16 (on a real ONNX export of the tiny model), the builder's and trtexec's arguments, and
the precision plan written beside the engine. Building the engine itself needs the device."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json
from pipeline.deploy import device as deploy
from pipeline.deploy import export
from pipeline.deploy import trt_fallback as fallback
from pipeline.model import tensorrt as trt
from pipeline.model.parity import Parity
from tests._tiny import IMGSZ

FAILED = Parity(
    name="tensorrt-int8",
    file="model.int8.engine",
    reference="onnx",
    images=4,
    max_abs_diff=None,
    map_reference=0.41,
    map_candidate=0.35,
    failure="mAP50-95 0.3500 vs onnx 0.4100 on 4 validation images differs by 0.0600 (tolerance 0.03)",
)


@pytest.fixture(scope="module")
def onnx_model(project, tmp_path_factory) -> Path:
    staged = tmp_path_factory.mktemp("fallback") / "model.pt"
    shutil.copy(project.train / "weights" / "best.pt", staged)
    return export.export_format(staged, {"format": "onnx", "imgsz": IMGSZ, "device": "cpu", "verbose": False})


def test_a_failed_int8_engine_gets_its_detection_head_pinned_to_fp16(onnx_model):
    assert fallback.needs_fallback("int8", FAILED)
    assert not fallback.needs_fallback("fp16", FAILED)  # FP16 has nothing lower to fall back from
    plan = fallback.precision_plan(onnx_model, trt.OUTPUT, FAILED)

    nodes = fallback.graph_nodes(onnx_model)
    (producer,) = [n for n in nodes if trt.OUTPUT in n.output]
    head = fallback.module_of(producer.name)
    assert head == "/model.23/"  # YOLO11's Detect module
    pinned = plan.layer_precisions
    head_convs = [n.name for n in nodes if n.name.startswith(head) and n.op_type == "Conv"]
    assert head_convs and set(head_convs) <= set(pinned)  # box, class and DFL convolutions
    assert any(n.op_type == "Sigmoid" and n.name in pinned for n in nodes)
    assert all(name.startswith(head) for name in pinned)  # nothing outside the head without a flag
    assert set(pinned.values()) == {"fp16"}
    assert {n.op_type for n in nodes if n.name in pinned} <= set(fallback.PINNABLE)  # no shape ops
    assert all("detection head (/model.23/)" in layer.reason for layer in plan.layers)
    assert plan.trigger == FAILED.failure and plan.precision == "int8"


def test_layers_a_per_layer_check_flags_are_pinned_too(onnx_model):
    nodes = fallback.graph_nodes(onnx_model)
    backbone = [n for n in nodes if n.op_type == "Conv" and not n.name.startswith("/model.23/")]
    drifting, steady = backbone[0], backbone[1]
    rng = np.random.default_rng(0)
    reference = {node.output[0]: rng.normal(size=(1, 8, 4, 4)) for node in (drifting, steady)}
    candidate = {
        drifting.output[0]: reference[drifting.output[0]] + 0.5,  # far beyond 5% of its range
        steady.output[0]: reference[steady.output[0]] * 1.001,
    }
    flagged = fallback.flag_layers(nodes, reference, candidate, max_relative_error=0.05)
    assert list(flagged) == [drifting.name] and "per-layer check: relative error" in flagged[drifting.name]

    plan = fallback.precision_plan(onnx_model, trt.OUTPUT, FAILED, flagged)
    assert plan.layer_precisions[drifting.name] == "fp16" and steady.name not in plan.layer_precisions
    (layer,) = [layer for layer in plan.layers if layer.name == drifting.name]
    assert layer.reason == flagged[drifting.name] and layer.op == "Conv"


def test_no_plan_for_a_passed_engine_nor_for_an_unknown_layer(onnx_model):
    passed = Parity(**{**FAILED.__dict__, "failure": None})
    with pytest.raises(PipelineError, match="passed its parity check"):
        fallback.precision_plan(onnx_model, trt.OUTPUT, passed)
    with pytest.raises(PipelineError, match="'/nowhere/Conv', which is no node of"):
        fallback.precision_plan(onnx_model, trt.OUTPUT, FAILED, {"/nowhere/Conv": "flagged"})


def test_the_plan_json_trtexec_and_builder_get_the_same_layers(onnx_model, tmp_path):
    plan = fallback.precision_plan(onnx_model, trt.OUTPUT, FAILED)
    names = list(plan.layer_precisions)
    expected_flags = [
        "--layerPrecisions=" + ",".join(f"{name}:fp16" for name in names),
        "--precisionConstraints=obey",
    ]
    assert plan.trtexec_arguments() == expected_flags
    profile = trt.Profile((1, 3, IMGSZ, IMGSZ), dynamic=False)
    engine = tmp_path / "model.int8.engine"
    command = trt.trtexec_command(onnx_model, engine, "int8", 4, profile, Path("c"), plan.layer_precisions)
    assert command[-2:] == expected_flags and command[-5:-2] == ["--fp16", "--int8", "--calib=c"]
    assert trt.trtexec_command(onnx_model, engine, "int8", 4, profile) == command[:-3]  # no plan: no flags

    written = deploy.write_plan(engine, plan, "trtexec ...")
    assert written == tmp_path / "model.int8.engine.precision.json"
    saved = read_json(written)
    assert saved["builder"] == {"layer_precisions": plan.layer_precisions, "obey_precision_constraints": True}
    assert saved["trtexec"] == expected_flags and saved["command"] == "trtexec ..."
    assert [layer["name"] for layer in saved["layers"]] == names
    assert {layer["precision"] for layer in saved["layers"]} == {"fp16"}
    assert saved["trigger"] == FAILED.failure and saved["source_onnx"] == str(onnx_model)

    # what build_engine does with those precisions, on stand-ins for TensorRT's network and module
    layers = [SimpleNamespace(name=name, precision=None) for name in [*names[:3], "/model.0/conv/Conv"]]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    module = SimpleNamespace(float16="half", float32="float", int8="int8")
    missing = trt.pin_layers(network, saved["builder"]["layer_precisions"], module)
    assert [layer.precision for layer in layers] == ["half", "half", "half", None]
    assert missing == names[3:]  # reported: layers the parser fused or named otherwise
