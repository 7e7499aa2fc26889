"""INT8 engines that fail their parity bound: which layers to pin to FP16, and the plan that says why.

When an INT8 engine's mAP50-95 drifts beyond `export.tensorrt.max_map_drop.int8`, deploy rebuilds it
once with the detection head (every compute node of the module that produces the ONNX output: its
box and class convolutions, the Sigmoid, the DFL and the box decoding) and any layer a per-layer
comparison flags pinned to FP16 under obeyed precision constraints, and checks it again with the
same bound. The precision plan (a JSON beside the engine) lists each pinned layer, its precision
and why, and holds the exact arguments the builder got: the layer precisions the Python builder
applies and the equivalent trtexec flags (`--layerPrecisions`, `--precisionConstraints=obey`).
Everything here is plain Python on the ONNX graph; nothing needs TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.core.errors import PipelineError
from pipeline.model import tensorrt as trt
from pipeline.model.parity import Parity

# ONNX operators that compute on float tensors: the ones a precision constraint means something for.
# Shape arithmetic (Shape, Gather, Reshape, Constant, ...) is left to TensorRT.
PINNABLE = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Sigmoid", "Softmax", "Mul", "Add", "Sub", "Div")
FALLBACK = "fp16"
TRTEXEC_SEPARATORS = (",", ":")  # --layerPrecisions=name:precision,name:precision


@dataclass(frozen=True)
class PinnedLayer:
    name: str  # the ONNX node name, which TensorRT's ONNX parser gives the layer
    op: str
    precision: str
    reason: str


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # the engine's precision; layers not listed are left to TensorRT at that precision
    trigger: str  # the parity failure that asked for the plan
    source_onnx: str
    layers: tuple[PinnedLayer, ...]

    @property
    def layer_precisions(self) -> dict[str, str]:
        """What the Python builder applies: layer name -> precision (TensorRT layer.precision)."""
        return {layer.name: layer.precision for layer in self.layers}

    def trtexec_arguments(self) -> list[str]:
        return trt.layer_precision_arguments(self.layer_precisions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "trigger": self.trigger,
            "source_onnx": self.source_onnx,
            "layers": [asdict(layer) for layer in self.layers],
            "builder": {"layer_precisions": self.layer_precisions, "obey_precision_constraints": True},
            "trtexec": self.trtexec_arguments(),
        }


# ---- the graph ------------------------------------------------------------------------------------


def graph_nodes(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path), load_external_data=False).graph.node)


def module_of(name: str) -> str:
    """The module prefix of an Ultralytics ONNX node name: "/model.23/cv2.0/Conv" -> "/model.23/"."""
    parts = name.split("/")
    return "/".join(parts[:2]) + "/" if len(parts) > 2 else name


def detection_head(nodes: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The compute nodes of the module that produces `output` (Ultralytics' Detect head)."""
    producers = [node for node in nodes if output in node.output]
    if not producers:
        raise PipelineError(f"no node of the ONNX graph produces its output {output!r}")
    prefix = module_of(producers[0].name)
    return [node for node in nodes if node.name.startswith(prefix) and node.op_type in PINNABLE]


def flag_layers(
    nodes: list[onnx.NodeProto],
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    max_relative_error: float,
) -> dict[str, str]:
    """A per-layer check: node name -> why, for each node whose output tensor differs between the
    reference (the ONNX) and the candidate (the INT8 engine) by more than `max_relative_error` of the
    reference's largest magnitude. The tensors are keyed by ONNX tensor name (e.g. Polygraphy's
    `--mark all` outputs)."""
    producer = {output: node for node in nodes for output in node.output}
    flagged = {}
    for tensor, expected in reference.items():
        node = producer.get(tensor)
        if node is None or tensor not in candidate or node.op_type not in PINNABLE:
            continue
        scale = max(float(np.abs(expected).max()), 1e-12)
        error = float(np.abs(np.asarray(candidate[tensor], dtype=np.float64) - expected).max()) / scale
        if error > max_relative_error:
            flagged[node.name] = f"per-layer check: relative error {error:.4f} > {max_relative_error}"
    return flagged


# ---- the decision -----------------------------------------------------------------------------------


def needs_fallback(precision: str, parity: Parity) -> bool:
    return precision == "int8" and not parity.passed


def precision_plan(
    onnx_path: Path, output: str, parity: Parity, flagged: Mapping[str, str] | None = None
) -> PrecisionPlan:
    """The layers to pin to FP16 after `parity` failed: the detection head, then what `flagged` names."""
    if parity.passed:
        raise PipelineError(f"{parity.name} passed its parity check: there is nothing to fall back from")
    nodes = graph_nodes(onnx_path)
    by_name = {node.name: node for node in nodes}
    head = detection_head(nodes, output)
    why = f"detection head ({module_of(head[0].name) if head else output}): box and score outputs"
    layers = {node.name: PinnedLayer(node.name, node.op_type, FALLBACK, why) for node in head}
    for name, reason in (flagged or {}).items():
        if name not in by_name:
            raise PipelineError(f"the per-layer check flagged {name!r}, which is no node of {onnx_path}")
        if name not in layers:
            layers[name] = PinnedLayer(name, by_name[name].op_type, FALLBACK, reason)
    for name in layers:
        if any(separator in name for separator in TRTEXEC_SEPARATORS):
            raise PipelineError(f"layer {name!r} cannot be named in trtexec's --layerPrecisions")
    return PrecisionPlan("int8", parity.failure or "", str(onnx_path), tuple(layers.values()))
