"""The `data:` section of the configuration: where the dataset is, its format, and how prepare
validates, splits and normalises it (conf/data/*.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.config_checks import SENSORS, require

DATA_FORMATS = ("synthetic", "yolo", "coco", "voc")


@dataclass
class SyntheticConfig:
    sensor: str
    images: int
    size: int
    seed: int

    def __post_init__(self) -> None:
        require(self.sensor in SENSORS, "data.synthetic.sensor", self.sensor, f"one of {SENSORS}")
        require(self.images >= 10, "data.synthetic.images", self.images, "generate at least 10")
        require(self.size >= 32, "data.synthetic.size", self.size, "frames of at least 32 px")


SPLITS = ("train", "val", "test")
SPLIT_MODES = ("auto", "source", "group")
LINK_MODES = ("hardlink", "symlink", "copy")
NORMALIZE_METHODS = ("percentile", "fixed")
NORMALIZE_SCOPES = ("frame", "dataset")
LABEL_FRAMES = ("displayed", "stored")
# What each validation finding may do. error: the stage fails (the report is still written);
# drop: remove the offending box, line or image; fix: repair it; warn: keep it as it is, reported.
# An action is listed only where it is meaningful (a box outside the image cannot be kept as is).
FINDING_ACTIONS: dict[str, tuple[str, ...]] = {
    "unreadable_image": ("error", "drop"),
    "exif_orientation": ("error", "drop", "fix", "warn"),
    "size_mismatch": ("error", "drop", "warn"),
    "bad_line": ("error", "drop", "fix"),
    "class_out_of_range": ("error", "drop"),
    "unknown_class": ("error", "drop"),
    "out_of_bounds": ("error", "drop"),
    "slightly_out_of_bounds": ("error", "drop", "fix"),
    "degenerate_box": ("error", "drop"),
    "tiny_box": ("error", "drop", "warn"),
    "duplicate_box": ("error", "drop", "warn"),
    "near_duplicate_box": ("error", "drop", "warn"),
    "missing_label": ("error", "drop", "warn"),
    "background_image": ("error", "drop", "warn"),
    "orphan_label": ("error", "warn"),
    "unlisted_image": ("error", "drop", "warn"),
    "no_group": ("error", "warn"),
    "duplicate_image": ("error", "drop", "warn"),
    "near_duplicate_image": ("error", "drop", "warn"),
    "split_leakage": ("error", "drop", "fix", "warn"),
    "zero_based_voc": ("error", "fix", "warn"),
}


@dataclass
class PolicyConfig:
    """One action per finding kind (see FINDING_ACTIONS and conf/data/synthetic_thermal.yaml)."""

    unreadable_image: str
    exif_orientation: str
    size_mismatch: str
    bad_line: str
    class_out_of_range: str
    unknown_class: str
    out_of_bounds: str
    slightly_out_of_bounds: str
    degenerate_box: str
    tiny_box: str
    duplicate_box: str
    near_duplicate_box: str
    missing_label: str
    background_image: str
    orphan_label: str
    unlisted_image: str
    no_group: str
    duplicate_image: str
    near_duplicate_image: str
    split_leakage: str
    zero_based_voc: str

    def __post_init__(self) -> None:
        for kind, allowed in FINDING_ACTIONS.items():
            value = getattr(self, kind)
            require(value in allowed, f"data.validation.policy.{kind}", value, f"choose one of {allowed}")


@dataclass
class ValidationConfig:
    clip_tolerance: float  # normalised units a box may overhang the frame and still be clipped
    min_box_pixels: float  # a box narrower or lower than this (in source pixels) is a tiny_box
    near_duplicate_box_iou: float
    near_duplicate_image_distance: int  # perceptual-hash Hamming distance (of 64 bits)
    exif_labels_frame: str  # frame of labels that state no image size (YOLO txt)
    missing_label_is_background: bool
    policy: PolicyConfig

    def __post_init__(self) -> None:
        key = "data.validation"
        require(0 <= self.clip_tolerance < 0.5, f"{key}.clip_tolerance", self.clip_tolerance, "0 to 0.5")
        require(self.min_box_pixels >= 0, f"{key}.min_box_pixels", self.min_box_pixels, "use >= 0")
        iou = self.near_duplicate_box_iou
        require(0 < iou <= 1, f"{key}.near_duplicate_box_iou", iou, "an IoU in (0, 1]")
        distance = self.near_duplicate_image_distance
        require(0 <= distance <= 16, f"{key}.near_duplicate_image_distance", distance, "0 to 16 bits")
        frame = self.exif_labels_frame
        require(frame in LABEL_FRAMES, f"{key}.exif_labels_frame", frame, f"one of {LABEL_FRAMES}")


@dataclass
class SplitConfig:
    mode: str  # auto: keep the source's splits if it has train and val, else split by group
    group_pattern: str | None  # regex on the file stem; its first group is the group key
    train: float
    val: float
    test: float
    move_source_images: bool  # split_leakage=fix may move images between the source's own splits

    def __post_init__(self) -> None:
        require(self.mode in SPLIT_MODES, "data.split.mode", self.mode, f"one of {SPLIT_MODES}")
        ratios = (self.train, self.val, self.test)
        ok = self.train > 0 and self.val > 0 and self.test >= 0 and abs(sum(ratios) - 1) < 1e-6
        require(ok, "data.split", ratios, "train and val > 0, test >= 0, summing to 1")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                require(False, "data.split.group_pattern", self.group_pattern, f"a valid regex ({exc})")


@dataclass
class NormalizeConfig:
    """How frames deeper than 8 bit (radiometric 16-bit counts) become 8-bit images."""

    method: str  # percentile: stretch [low, high] percentiles; fixed: [fixed_low, fixed_high]
    scope: str  # percentile over each frame (AGC-like) or over the whole dataset (keeps contrast)
    low_percentile: float
    high_percentile: float
    fixed_low: float  # raw counts mapped to 0
    fixed_high: float  # raw counts mapped to 255

    def __post_init__(self) -> None:
        key = "data.normalize"
        require(self.method in NORMALIZE_METHODS, f"{key}.method", self.method, f"{NORMALIZE_METHODS}")
        require(self.scope in NORMALIZE_SCOPES, f"{key}.scope", self.scope, f"one of {NORMALIZE_SCOPES}")
        low, high = self.low_percentile, self.high_percentile
        require(0 <= low < high <= 100, f"{key}.low/high_percentile", (low, high), "0 <= low < high <= 100")
        fixed = (self.fixed_low, self.fixed_high)
        require(self.fixed_low < self.fixed_high, f"{key}.fixed_low/fixed_high", fixed, "low below high")


@dataclass
class CocoKeysConfig:
    """The JSON key names; some exporters write e.g. `annotation` or `filename` instead."""

    images: str
    annotations: str
    categories: str
    id: str
    file_name: str
    width: str
    height: str
    image_id: str
    category_id: str
    bbox: str
    name: str
    iscrowd: str


@dataclass
class CocoConfig:
    # split -> JSON under data.path; null: detect. Null rather than {} so that Hydra replaces it
    # with `data.coco.files={train: a.json}` (an empty mapping would only merge, and refuse new keys)
    files: dict[str, str] | None
    image_dir: str | None  # where file_name is resolved (under data.path); null: search
    category_id_base: int  # id of the first category when the JSON's categories carry no ids
    keys: CocoKeysConfig

    def __post_init__(self) -> None:
        base = self.category_id_base
        require(base in (0, 1), "data.coco.category_id_base", base, "0 or 1")
        for split in self.files or {}:
            require(split in SPLITS, f"data.coco.files.{split}", split, f"splits are {SPLITS}")


@dataclass
class VocConfig:
    annotations: str
    images: str
    image_sets: str
    # split -> list file under image_sets, e.g. {train: test.txt, val: val.txt}; null: {split}.txt.
    # Null rather than {}, so that Hydra replaces it (as data.coco.files)
    lists: dict[str, str] | None
    one_based: bool  # VOC pixel indices start at 1 (Ultralytics' VOC conversion subtracts 1)

    def __post_init__(self) -> None:
        for split in self.lists or {}:
            require(split in SPLITS, f"data.voc.lists.{split}", split, f"splits are {SPLITS}")


FORMAT_SECTIONS = {"synthetic": "synthetic", "coco": "coco", "voc": "voc"}


@dataclass
class DataConfig:
    name: str
    format: str
    path: str | None
    class_map: dict[str, str | None]  # source name -> target, null drops
    link: str  # how unconverted images reach the output; falls back hardlink->symlink->copy
    split: SplitConfig
    normalize: NormalizeConfig
    validation: ValidationConfig
    allow_outside_paths: bool  # data.yaml splits, image lists and symlinks may leave data.path
    corrections: str | None  # audit's corrections.json, applied to the labels at prepare
    # The reader's own section, present for its format only (None is "absent", not a default: the
    # values live in conf/data/<entry>.yaml).
    synthetic: SyntheticConfig | None = None
    coco: CocoConfig | None = None
    voc: VocConfig | None = None

    def __post_init__(self) -> None:
        require(self.format in DATA_FORMATS, "data.format", self.format, f"one of {DATA_FORMATS}")
        if self.format != "synthetic":
            require(bool(self.path), "data.path", self.path, "set data.path=/path/to/dataset")
        require(self.link in LINK_MODES, "data.link", self.link, f"one of {LINK_MODES}")
        section = FORMAT_SECTIONS.get(self.format)
        if section is not None:
            require(
                getattr(self, section) is not None,
                f"data.{section}",
                None,
                f"data.format={self.format} reads the data.{section} section: copy it from conf/data/",
            )
