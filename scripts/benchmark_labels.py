"""Label reading and statistics: the analyze stage against `cat` and the guide's per-line loop.

Generates a YOLO label set (default 50,000 files holding 1,000,000 boxes, five classes with the
guide's Table 21 imbalance) in a temp dir, then times on a warm page cache (best of --repeats):

  cat         xargs -0 cat over the same files (the floor: just reading the bytes)
  guide loop  section 17.1's analyze_dataset, reimplemented line for line (its prints captured)
  vectorised  what analyze does: list the files, read them (pipeline.data.labels.read_labels), and
              compute the split statistics and facts (pipeline.data.analyze), in a fresh process whose
              peak resident memory (VmHWM, interpreter and imports included) is reported

Targets (issue 3): vectorised <= 2x cat, >= 3x faster than the guide loop, peak memory < 500 MB.
Image headers are not part of this measurement (the set has no images; every frame is 640x640,
the size the guide's loop assumes), and the bucket and class counts of both methods must agree.

    .venv/bin/python scripts/benchmark_labels.py [--files 50000] [--boxes 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

CLASS_SHARES = (0.5, 0.2, 0.15, 0.1, 0.05)  # guide Table 21
FRAME = 640
TARGET_CAT_RATIO, TARGET_SPEEDUP, TARGET_MEMORY_MB = 2.0, 3.0, 500.0


def generate(root: Path, files: int, boxes: int, seed: int = 0) -> list[str]:
    """labels/train/*.txt under root, plus the data.yaml the guide's function starts from."""
    rng = np.random.default_rng(seed)
    folder = root / "labels" / "train"
    folder.mkdir(parents=True)
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b, c, d, e]\n")
    per_file = rng.multinomial(boxes, np.full(files, 1 / files))  # some files end up empty
    classes = rng.choice(len(CLASS_SHARES), size=boxes, p=CLASS_SHARES)
    centres = rng.uniform(0.05, 0.95, size=(boxes, 2))
    sizes = np.exp(rng.uniform(np.log(0.005), np.log(0.7), size=(boxes, 2)))  # tiny to large
    lines = [
        f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
        for c, (x, y), (w, h) in zip(classes.tolist(), centres.tolist(), sizes.tolist(), strict=True)
    ]
    paths, start = [], 0
    for index, count in enumerate(per_file.tolist()):
        path = folder / f"frame_{index:06d}.txt"
        path.write_text("".join(lines[start : start + count]))
        paths.append(str(path))
        start += count
    return paths


# ---- the three contenders ------------------------------------------------------------------------


def time_cat(paths: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-0", "cat"], input="\0".join(paths).encode(), stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - started


def analyze_dataset(data_yaml):
    """Guide section 17.1.1, as printed there (imports hoisted; plotting imports unused there too)."""
    labels_path = Path(data_yaml).parent / "labels" / "train"

    object_sizes = []
    class_counts = defaultdict(int)
    aspect_ratios = []

    for label_file in labels_path.glob("*.txt"):
        with open(label_file) as f:
            for line in f:
                cls, x, y, w, h = map(float, line.strip().split())  # noqa: RUF059 (as printed)

                # Object size (pixels at 640)
                area = w * h * (640 * 640)
                object_sizes.append(area)

                # Class distribution
                class_counts[int(cls)] += 1

                # Aspect ratio
                aspect_ratios.append(w / (h + 1e-6))

    object_sizes = np.array(object_sizes)

    print("== Object Size Distribution ==")
    print(f"Tiny (<32px): {np.sum(object_sizes < 1024)}")
    print(f"Small (32-96px): {np.sum((object_sizes >= 1024) & (object_sizes < 9216))}")
    print(f"Medium (96-320px): {np.sum((object_sizes >= 9216) & (object_sizes < 102400))}")
    print(f"Large (>320px): {np.sum(object_sizes >= 102400)}")

    print("\n==== Class Distribution ===")
    for cls, count in sorted(class_counts.items()):
        print(f"Class {cls}: {count} instances")

    # Check imbalance
    counts = list(class_counts.values())
    imbalance_ratio = max(counts) / min(counts)
    print(f"\nClass imbalance: {imbalance_ratio:.2f}")
    if imbalance_ratio > 5:
        print("WARNING: Severe imbalance!")

    return {
        "tiny": np.sum(object_sizes < 1024),
        "small": np.sum((object_sizes >= 1024) & (object_sizes < 9216)),
        "medium": np.sum((object_sizes >= 9216) & (object_sizes < 102400)),
        "large": np.sum(object_sizes >= 102400),
    }, dict(class_counts)


def time_guide(root: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        buckets, classes = analyze_dataset(root / "data.yaml")
    elapsed = time.perf_counter() - started
    return elapsed, {"buckets": {k: int(v) for k, v in buckets.items()}, "classes": classes}


def vectorised(folder: str) -> dict:
    """What the analyze stage does for one split's labels, given its image sizes."""
    from pipeline.data.analyze import SplitData, dataset_facts, split_statistics
    from pipeline.data.labels import read_labels

    paths = sorted(entry.path for entry in os.scandir(folder) if entry.name.endswith(".txt"))
    table = read_labels(paths, num_classes=len(CLASS_SHARES))
    data = SplitData("train", table, np.full((len(paths), 2), FRAME, dtype=np.int64))
    names = [str(i) for i in range(len(CLASS_SHARES))]
    stats = split_statistics(data, names, FRAME)
    dataset_facts(data, len(names))
    classes = {int(name): n for name, n in stats.class_instances.items() if n}
    return {"buckets": stats.size_buckets, "classes": classes, "imbalance": stats.imbalance_ratio}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec from the parent, so a spawned child would report the parent's (label-generating) peak."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(li for li in status.read_text().splitlines() if li.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)
    )


def vectorised_worker(folder: str, connection) -> None:
    """A fresh process: one timed run per request, then its peak memory when asked to stop."""
    import pandas  # noqa: F401  (imported before measuring, as the stage has it loaded)

    from pipeline import analyze  # noqa: F401

    imports_mb = peak_rss_mb()
    while connection.recv() == "run":
        started = time.perf_counter()
        result = vectorised(folder)
        connection.send((time.perf_counter() - started, result))
    connection.send({"peak_mb": peak_rss_mb(), "imports_mb": imports_mb})


class VectorisedProcess:
    def __init__(self, folder: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=vectorised_worker, args=(folder, child))
        self.process.start()
        child.close()  # so a crashed worker ends recv() with EOFError instead of a hang

    def run(self) -> tuple[float, dict]:
        self.connection.send("run")
        return self.connection.recv()

    def stop(self) -> dict:
        self.connection.send("stop")
        memory = self.connection.recv()
        self.process.join()
        return memory


def measure(root: Path, paths: list[str], repeats: int) -> tuple[float, float, dict, dict]:
    """Best of `repeats` for each contender, interleaved so that a busy spell on a shared machine
    slows all three alike instead of whichever happened to run then."""
    time_cat(paths)  # warm the page cache: every contender reads from memory
    worker = VectorisedProcess(str(root / "labels" / "train"))
    cat, guide, ours = [], [], []
    for _ in range(repeats):
        cat.append(time_cat(paths))
        guide.append(time_guide(root))
        ours.append(worker.run())
    memory = worker.stop()
    vectorised_report = {"seconds": min(t for t, _ in ours), "result": ours[0][1], **memory}
    return min(cat), min(t for t, _ in guide), guide[0][1], vectorised_report


# ---- report --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--boxes", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_labels_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = generate(root, args.files, args.boxes)
        size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
        print(
            f"generated {len(paths)} label files, {args.boxes} boxes, {size_mb:.0f} MB "
            f"in {time.perf_counter() - started:.1f} s"
        )
        cat, guide, guide_result, ours = measure(root, paths, args.repeats)
    return report(cat, guide, guide_result, ours)


def report(cat: float, guide: float, guide_result: dict, ours: dict) -> int:
    seconds, peak = ours["seconds"], ours["peak_mb"]
    agree = (
        ours["result"]["buckets"] == guide_result["buckets"]
        and ours["result"]["classes"] == guide_result["classes"]
    )
    checks = [
        (f"vectorised <= {TARGET_CAT_RATIO:g}x cat", seconds / cat, seconds <= TARGET_CAT_RATIO * cat),
        (
            f"guide loop / vectorised >= {TARGET_SPEEDUP:g}",
            guide / seconds,
            guide / seconds >= TARGET_SPEEDUP,
        ),
        (f"peak memory < {TARGET_MEMORY_MB:g} MB", peak, peak < TARGET_MEMORY_MB),
        ("same buckets and class counts as the guide loop", float(agree), agree),
    ]
    print(f"\n{'method':<12} {'seconds':>8}  {'x cat':>6}")
    for name, value in (("cat", cat), ("guide loop", guide), ("vectorised", seconds)):
        print(f"{name:<12} {value:>8.3f}  {value / cat:>6.2f}")
    print(
        f"\nvectorised peak RSS {peak:.0f} MB (interpreter + numpy + pandas imports alone: "
        f"{ours['imports_mb']:.0f} MB)"
    )
    print(f"buckets at {FRAME} px: {ours['result']['buckets']}, imbalance {ours['result']['imbalance']}\n")
    for name, value, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.2f}")
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
