"""The guide's rules as pure functions: every derived value comes back with its reason.

Source: ../shared/seeds/000 ("Complete Professional Guide to Training YOLO Object Detectors From
Scratch"), sections 2.7, 4.4, 5.3-5.4, 6, 7.1, 13 and 14.5. The guide's numbers are its authors'
claims; the configurable ones live in conf/ (sensor and hardware groups) and an explicit value in
the config always wins over `auto`. `analyze` and `train` both resolve through `resolve_plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.augmentation import (
    SMALL_OBJECT_SHARE,
    augmentation_rule,
    check_sensor_guardrails,
    copy_paste_warning,
)
from pipeline.core.config import AUGMENTATION_KEYS, HardwareConfig, PipelineConfig, SensorConfig
from pipeline.core.config_checks import AUTO, SCALES
from pipeline.core.errors import GuardrailError
from pipeline.core.facts import SMALL_OBJECT_PX, DatasetFacts

# The sensor-specific tables (Table 10's epoch column, patience fraction, per-class image need) are
# in conf/sensor/<name>.yaml, so a new sensor is YAML only.
EPOCH_BUFFER = 1.15  # Table 10 note: set config epochs 15-20 % above the expected convergence
# Warmup takes at most this share of a run: caps of 5, 15 and 40 % lost at 20 epochs (benchmark_plans).
WARMUP_MAX_FRACTION = 0.5
# Table 5 minimum images per scale, and Algorithm 3's dataset-based ceiling.
SCALE_MIN_IMAGES = {"n": 1500, "s": 3000, "m": 6000, "l": 10000, "x": 15000}
SCALE_CEILING = ((3000, "n"), (8000, "s"), (15000, "m"))
MAX_BATCH = 256
PATIENCE_FLOOR = 50  # epochs: early stopping never judges a from-scratch run sooner (benchmark_plans)
NOMINAL_BATCH = 64  # Ultralytics' nbs: gradients accumulate to 64 images per optimizer step per device
MIN_BATCHES_PER_EPOCH = 16
# Optimizer steps below which a run is short: Ultralytics' own line for optimizer=auto (10,000 iterations).
SHORT_RUN_STEPS = 10_000
SEVERE_IMBALANCE = 5.0  # 17.1: max/min instances above 5 is severe
# Ultralytics' optimizers that scale each step by a running gradient magnitude.
ADAPTIVE_OPTIMIZERS = {"adam", "adamw", "nadam", "radam", "adamax"}
CLASS_WEIGHT_POWER = 0.5  # Ultralytics cls_pw when the imbalance is severe (guide 14.2)


@dataclass(frozen=True)
class Decision:
    key: str
    value: Any
    source: str  # explicit | auto | profile
    reason: str


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    warnings: tuple[str, ...] = field(default=())

    def value(self, key: str) -> Any:
        return self.decision(key).value

    def decision(self, key: str) -> Decision:
        return next(d for d in self.decisions if d.key == key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": [d.__dict__ for d in self.decisions],
            "warnings": list(self.warnings),
        }

    def table(self) -> str:
        width = max(len(d.key) for d in self.decisions)
        rows = [f"{d.key:<{width}}  {d.value!s:<10} {d.source:<8} {d.reason}" for d in self.decisions]
        header = f"{'key':<{width}}  {'value':<10} {'source':<8} reason"
        warnings = [f"WARNING: {w}" for w in self.warnings]
        return "\n".join([header, "-" * len(header), *rows, *warnings])


# ---- single rules: each returns (value, reason) -------------------------------------------------


def epochs_for_classes(backbone: int, k: float, classes: int) -> tuple[int, str]:
    """Section 14.5: E = E_backbone + k*sqrt(C), since the backbone is shared across classes."""
    value = round(backbone + k * math.sqrt(classes))
    return value, f"{backbone} + {k:g} x sqrt({classes}) (E_backbone + k*sqrt(C), guide 14.5)"


def epochs_for_dataset_size(sensor: SensorConfig, train_images: int) -> tuple[int, str]:
    """Table 10: convergence epochs by dataset size, plus the 15 % buffer its note asks for."""
    _, low, high = max((r for r in sensor.epoch_table if train_images >= r[0]), key=lambda r: r[0])
    value = round(high * EPOCH_BUFFER)
    return value, f"Table 10 ({sensor.name}, {train_images} images): converges by {low}-{high}, +15 % buffer"


def epochs_rule(cfg: PipelineConfig, facts: DatasetFacts | None) -> tuple[int, str]:
    by_classes, reason = epochs_for_classes(
        cfg.sensor.epoch_backbone, cfg.sensor.epoch_per_sqrt_class, len(cfg.classes.names)
    )
    if facts is None:
        return by_classes, f"{by_classes} = {reason}"
    by_size, size_reason = epochs_for_dataset_size(cfg.sensor, facts.train_images)
    if by_size > by_classes:
        return by_size, f"{by_size} from {size_reason}; above {by_classes} = {reason}"
    return by_classes, f"{by_classes} = {reason}; {size_reason} asks only {by_size}"


def lr0_rule(sensor: SensorConfig, classes: int, optimizer: str) -> tuple[float, str]:
    """Section 14.5.6: lr0 = 0.01/sqrt(C/3), never above the base; the sensor's factor (thermal
    0.8, Table 26) only for SGD: it answers weaker gradients, and Adam-type optimizers divide each
    step by the gradient's running scale, which cancels the reason for it."""
    lr_base, lr_factor = sensor.lr_base, sensor.lr_factor
    by_classes = lr_base / math.sqrt(classes / 3) if classes > 3 else lr_base
    reason = f"{lr_base:g}/sqrt({classes}/3)" if classes > 3 else f"base {lr_base:g} (C <= 3)"
    if lr_factor == 1.0:
        return round(by_classes, 5), reason + " (guide 14.5.6)"
    if optimizer.lower() in ADAPTIVE_OPTIMIZERS:
        return round(by_classes, 5), reason + (
            f" (guide 14.5.6); {sensor.name}'s x {lr_factor:g} (Table 26, weaker gradients) not applied: "
            f"{optimizer} normalises the gradient scale, and at 20 epochs from scratch lr0 0.01 scored "
            "0.468 +- 0.023 mAP50-95 on synthetic_thermal against 0.447 +- 0.006 at 0.008, "
            "thermal_dogs_people 0.123 against 0.121 (3 seeds each; scripts/benchmark_plans.py)"
        )
    value = round(by_classes * lr_factor, 5)
    return value, reason + f" x {lr_factor:g} for {sensor.name} (weaker gradients, Table 26) (guide 14.5.6)"


def patience_rule(epochs: int, fraction: float) -> tuple[int, str]:
    """The guide's share of the epochs, but never under PATIENCE_FLOOR (or the whole run): from
    scratch, validation mAP sits at noise level for the first third of a run, and a short patience
    stops it there, on a best epoch that was luck."""
    share = max(1, round(epochs * fraction))
    reason = f"{fraction:.0%} of {epochs} epochs (guide 4.4.3, 5.4.4)"
    floor = min(epochs, PATIENCE_FLOOR)
    if share >= floor:
        return share, reason
    return floor, (
        f"{reason} is {share}, raised to {floor}{' (the whole run)' if floor == epochs else ''}: at 20 "
        "epochs from scratch, patience 6 stopped all 3 bccd seeds in the noise phase (mAP50-95 0.05 "
        "against 0.23 with Ultralytics' 100; scripts/benchmark_plans.py, README Training)"
    )


def warmup_rule(sensor_warmup: float, epochs: int) -> tuple[float, str]:
    """The sensor's warmup (guide 4.3, 5.4.5), at most WARMUP_MAX_FRACTION of a short run."""
    cap = max(1.0, round(epochs * WARMUP_MAX_FRACTION, 1))
    if sensor_warmup <= cap:
        return sensor_warmup, f"sensor default {sensor_warmup:g} (guide 4.3, 5.4.5)"
    return cap, (
        f"sensor default {sensor_warmup:g} capped at {WARMUP_MAX_FRACTION:.0%} of {epochs} epochs: at 20 "
        "epochs from scratch, warmup 3 / 8 / 10 epochs scored 0.463 / 0.502 / 0.511 mAP50-95 on "
        "synthetic_thermal, 0.106 / 0.122 / 0.126 (with scale 0.2) on thermal_dogs_people, and 3 / 8 "
        "0.242 / 0.274 on bccd (5 seeds each; 1 epoch was worse still; scripts/benchmark_plans.py, README "
        "Training)"
    )


def imgsz_rule(facts: DatasetFacts | None) -> tuple[int, str]:
    """Algorithm 4 from the share of small objects, never above the source frames (no new detail)."""
    if facts is None:
        return 640, "640 standard (no dataset analysis yet: run analyze for Algorithm 4)"
    small = facts.fraction_small
    wanted = 640 if small < SMALL_OBJECT_SHARE else 1280 if small < 0.5 else 1920
    reason = f"Algorithm 4: {small:.0%} of objects under {SMALL_OBJECT_PX} px -> {wanted}"
    source_cap = math.ceil(facts.max_side / 32) * 32
    if source_cap < wanted:
        return (
            source_cap,
            f"{reason}, capped at the {facts.max_side} px source frames (upsampling adds nothing)",
        )
    return wanted, reason


def batch_rule(table: dict[str, dict[int, int]], scale: str, imgsz: int, profile: str) -> tuple[int, str]:
    """Hardware table by scale and image size; memory goes with pixels, so scale by area between rows."""
    if scale not in table:
        largest = max(table, key=SCALES.index)
        return 1, f"{profile} has no batch row for scale {scale} (largest listed: {largest}); 1 is a guess"
    rows = table[scale]
    nearest = min(rows, key=lambda size: abs(size - imgsz))
    scaled = rows[nearest] * (nearest / imgsz) ** 2
    value = int(min(MAX_BATCH, 2 ** math.floor(math.log2(max(1.0, scaled)))))
    reason = f"{profile} table: {rows[nearest]} at {nearest} px for scale {scale}"
    if nearest != imgsz:
        reason += f", x({nearest}/{imgsz})^2 by area, rounded down to a power of 2"
    return value, reason


def training_batch_rule(cfg: PipelineConfig, imgsz: int, facts: DatasetFacts | None) -> tuple[int, str]:
    """The memory rule, then capped: a batch above the nominal 64 per device only means fewer
    optimizer steps, and a small dataset needs enough batches per epoch to learn at all."""
    hw = cfg.hardware
    value, reason = batch_rule(hw.batch, cfg.model.scale, imgsz, f"profile {hw.name}")
    nominal = NOMINAL_BATCH * max(1, hw.gpus)
    if value > nominal:
        value, reason = nominal, f"{reason}; capped at {nominal} (nominal batch 64 per device)"
    if facts is not None:
        per_epoch = 2 ** math.floor(math.log2(max(1, facts.train_images // MIN_BATCHES_PER_EPOCH)))
        if per_epoch < value:
            value = per_epoch
            reason += f"; {per_epoch} so {facts.train_images} images make >= {MIN_BATCHES_PER_EPOCH} batches"
    # Ultralytics splits the batch across DDP ranks: below one image per GPU a rank gets none
    world = max(1, hw.gpus)
    if value < world:
        value, reason = world, f"{reason}; floored at {world}, one image per GPU"
    return value, reason


def nominal_batch_rule(batch: int, gpus: int, facts: DatasetFacts | None, epochs: int) -> tuple[int, str]:
    """An optimizer step every batch on a short run. Ultralytics accumulates gradients to `nbs` = 64
    images per device before each step, which suits runs of COCO's length; a small dataset at a short
    budget is left with a few dozen steps (142 images for 20 epochs: 60)."""
    world, default = max(1, gpus), f"Ultralytics' {NOMINAL_BATCH}"
    per_device = max(1, batch // world)
    if per_device >= NOMINAL_BATCH:
        return NOMINAL_BATCH, f"{default}: {per_device} images per device are one step already"
    if facts is None:
        return NOMINAL_BATCH, f"{default} (the dataset's size is unknown until analyze runs)"
    steps = math.ceil(facts.train_images / (NOMINAL_BATCH * world)) * epochs
    if steps >= SHORT_RUN_STEPS:
        return NOMINAL_BATCH, f"{default}: {steps} optimizer steps make a long run (not measured here)"
    every_batch = math.ceil(facts.train_images / (per_device * world)) * epochs
    return per_device, (
        f"the batch per device, a step every batch: {every_batch} optimizer steps instead of {steps} at "
        f"{default} (under {SHORT_RUN_STEPS:,}, Ultralytics' own short run). At 20 epochs, 128 px, batch 16 "
        "from scratch this scored 0.165 +- 0.026 against 0.118 +- 0.016 mAP50-95 on thermal_dogs_people "
        "and 0.586 against 0.539 on a fresh synthetic set (3 seeds each, chosen there; "
        "scripts/benchmark_plans.py, README Training)"
    )


def class_weight_rule(facts: DatasetFacts | None) -> tuple[float, str]:
    """Guide 14.2: weight the classification loss toward rare classes when the imbalance is severe;
    the square root of inverse frequency corrects without letting a handful of images dominate."""
    ratio = None if facts is None else imbalance_ratio({str(i): n for i, n in enumerate(facts.class_images)})
    if ratio is None:
        return 0.0, "class balance unknown (no analyze facts): no class weights"
    if ratio <= SEVERE_IMBALANCE:
        return 0.0, f"images per class {ratio:g}:1 (<= {SEVERE_IMBALANCE:g}): no class weights"
    return CLASS_WEIGHT_POWER, (
        f"images per class {ratio:g}:1 (> {SEVERE_IMBALANCE:g}, guide 14.2): "
        f"class weights at inverse frequency^{CLASS_WEIGHT_POWER:g}"
    )


def max_scale_for_dataset(train_images: int) -> str:
    """Algorithm 3: the largest scale the dataset size supports."""
    return next((scale for limit, scale in SCALE_CEILING if train_images < limit), "x")


# ---- the plan -------------------------------------------------------------------------------------


def resolve_plan(cfg: PipelineConfig, facts: DatasetFacts | None = None) -> Plan:
    """Resolve every `auto` training value; explicit values are kept and labelled as such."""
    check_sensor_guardrails(cfg)
    decisions: dict[str, Decision] = {}

    def decide(key: str, explicit: Any, derive) -> Any:
        if explicit != AUTO:
            decisions[key] = Decision(key, explicit, "explicit", "set in the config")
        else:
            value, reason = derive()
            source = "profile" if reason.startswith("profile") else "auto"
            decisions[key] = Decision(key, value, source, reason)
        return decisions[key].value

    t, hw, classes = cfg.train, cfg.hardware, len(cfg.classes.names)
    epochs = decide("epochs", t.epochs, lambda: capped_by_profile(epochs_rule(cfg, facts), hw))
    decide("patience", t.patience, lambda: patience_rule(epochs, cfg.sensor.patience_fraction))
    decide("time", t.time_hours, lambda: _time_budget(cfg))
    imgsz = decide("imgsz", t.imgsz, lambda: imgsz_rule(facts))
    batch = decide("batch", t.batch, lambda: training_batch_rule(cfg, imgsz, facts))
    decide("nbs", t.nbs, lambda: nominal_batch_rule(batch, hw.gpus, facts, epochs))
    decide("workers", t.workers, lambda: workers_rule(hw))
    decide("device", AUTO, lambda: (hw.device, device_reason(hw)))
    decide("amp", t.amp, lambda: (hw.amp, f"profile {hw.name}"))
    decide("cache", t.cache, lambda: cache_rule(cfg, imgsz, facts))
    decide("lr0", t.lr0, lambda: lr0_rule(cfg.sensor, classes, t.optimizer))
    decide("warmup_epochs", t.warmup_epochs, lambda: warmup_rule(cfg.sensor.warmup_epochs, epochs))
    decide("close_mosaic", t.close_mosaic, lambda: close_mosaic_rule(epochs))
    decide("cls_pw", t.cls_pw, lambda: class_weight_rule(facts))
    for key in AUGMENTATION_KEYS:
        decide(key, getattr(t, key), lambda key=key: augmentation_rule(cfg, key, facts, imgsz))
    plan = Plan(tuple(decisions.values()), tuple(collect_warnings(cfg, facts, decisions)))
    if cfg.train.strict_guardrails and plan.warnings:
        raise GuardrailError(
            "strict_guardrails is on and the plan has warnings:\n  " + "\n  ".join(plan.warnings)
        )
    return plan


def capped_by_profile(derived: tuple[int, str], hardware: HardwareConfig) -> tuple[int, str]:
    """The profile's epoch ceiling (the `cpu` demo's): a count, not a clock, so every machine trains
    the same model from the same commit."""
    value, reason = derived
    if hardware.max_epochs is None or value <= hardware.max_epochs:
        return derived
    return hardware.max_epochs, (
        f"profile {hardware.name}: at most {hardware.max_epochs} epochs, the same on every machine "
        f"(the rules ask {value}: {reason}; set train.epochs or hardware.max_epochs=null for more)"
    )


def _time_budget(cfg: PipelineConfig) -> tuple[float | None, str]:
    hours = cfg.hardware.time_hours
    if hours is None:
        return None, f"profile {cfg.hardware.name}: no wall-clock limit, the epoch count rules"
    return hours, (
        f"profile {cfg.hardware.name}: {hours * 60:.0f} min wall-clock budget; Ultralytics fits the "
        "LR schedule into it (set train.time_hours=null for the full epoch count)"
    )


def device_reason(hardware: HardwareConfig) -> str:
    """On a CPU profile `gpus` counts DDP processes (cpu_ddp), not GPUs."""
    if hardware.device == "cpu":
        processes = f", {hardware.gpus} DDP processes (gloo)" if hardware.gpus > 1 else ""
        return f"profile {hardware.name}: CPU{processes}"
    return f"profile {hardware.name}: {hardware.gpus} GPU(s)"


def workers_rule(hardware: HardwareConfig) -> tuple[int, str]:
    """What really runs: Ultralytics loads data in the training process on CPU and MPS (it sets
    workers=0 there whatever is asked), so the plan says 0 rather than the profile's number."""
    if hardware.device in ("cpu", "mps"):
        return 0, f"profile {hardware.name} trains on {hardware.device}: Ultralytics uses 0 workers there"
    return hardware.workers, f"profile {hardware.name}"


def cache_rule(cfg: PipelineConfig, imgsz: int, facts: DatasetFacts | None) -> tuple[bool, str]:
    """No cache by default: Ultralytics' RAM cache makes training non-deterministic (its own
    warning), and its disk cache writes .npy files into the DVC-tracked dataset."""
    reason = (
        "no image cache, so two runs of one commit train the same model (RAM caching is not deterministic)"
    )
    if facts is None:
        return False, reason
    megabytes = facts.train_images * imgsz**2 * 3 / 1e6
    fits = megabytes < cfg.hardware.memory_gb * 1000 / 4
    room = "would fit" if fits else "would not fit"
    return False, f"{reason}; train.cache=true (RAM) is faster: ~{megabytes:.0f} MB at {imgsz} px {room}"


def close_mosaic_rule(epochs: int) -> tuple[int, str]:
    value = min(10, max(0, epochs // 10))
    share = f"{value / epochs:.0%}" if epochs else "none"
    return value, f"mosaic off for the last {value} of {epochs} epochs ({share}; 10 % of them, at most 10)"


def collect_warnings(
    cfg: PipelineConfig, facts: DatasetFacts | None, decisions: dict[str, Decision]
) -> list[str]:
    warnings = []
    scale = cfg.model.scale
    if SCALES.index(scale) > SCALES.index(cfg.hardware.max_scale):
        warnings.append(
            f"model scale {scale} is above what {cfg.hardware.name} runs (max {cfg.hardware.max_scale}, "
            "guide Algorithm 1): pick a smaller model for this target"
        )
    if facts is not None:
        ceiling = max_scale_for_dataset(facts.train_images)
        if SCALES.index(scale) > SCALES.index(ceiling):
            warnings.append(
                f"model scale {scale} needs >= {SCALE_MIN_IMAGES[scale]} images from scratch (Table 5); "
                f"{facts.train_images} support at most {ceiling} (Algorithm 3)"
            )
    batch_table = cfg.hardware.batch.get(scale, {})
    batch = decisions["batch"]
    if batch.source == "explicit" and batch_table:
        safe, _ = batch_rule(cfg.hardware.batch, scale, decisions["imgsz"].value, cfg.hardware.name)
        if batch.value > safe * 1.5:
            warnings.append(
                f"batch {batch.value} exceeds the {cfg.hardware.name} table ({safe} for {cfg.model.name} at "
                f"{decisions['imgsz'].value} px): expect CUDA out of memory"
            )
    return warnings + copy_paste_warning(decisions["copy_paste"].value)


def imbalance_ratio(instances: dict[str, int]) -> float | None:
    """max/min instances over the classes present (17.1); None when no class has an instance."""
    present = [n for n in instances.values() if n > 0]
    return round(max(present) / min(present), 3) if present else None
