"""Prepare's splits: keep the source's or split by group (stratified by class), then resolve
leakage and duplicates across and within the final splits, and say per split what changed it."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import replace

from pipeline.core.data_config import SPLITS, SplitConfig, ValidationConfig
from pipeline.core.errors import DataError
from pipeline.data.frames import Item
from pipeline.data.source import Source
from pipeline.data.validation import (
    FindingLog,
    hash_bits,
    near_pairs,
)

# ---- splits ------------------------------------------------------------------------------------

SPLIT_MAPPING_HINT = (
    "To train on the source's own splits, name them: COCO data.coco.files={train: a.json, val: b.json}; "
    "VOC data.voc.lists={train: test.txt, val: val.txt} (default {train,val}.txt); "
    "YOLO data.yaml train:/val:"
)


def assign_splits(items: list[Item], source: Source, spec: SplitConfig, seed: int) -> tuple[list[Item], str]:
    """Keep the source's train/val(/test), or split by group, stratified by class presence."""
    present = {item.split for item in items}
    has_source_splits = source.has_splits and {"train", "val"} <= present
    if spec.mode == "source" and not has_source_splits:
        found = ", ".join(sorted(s for s in present if s)) or "no splits at all"
        raise DataError(
            f"data.split.mode=source, but the source has no train and val splits (found: {found}). "
            f"{SPLIT_MAPPING_HINT}, or use data.split.mode=auto or group to split by group"
        )
    if spec.mode != "group" and has_source_splits:
        return items, "source"
    where = split_groups(items, spec, seed)
    return [replace(item, split=where[item.group]) for item in items], "group"


def split_groups(items: list[Item], spec: SplitConfig, seed: int) -> dict[str, str]:
    """Whole groups to splits, stratified by class presence (iterative stratification on groups).

    Each split wants its share of every class's frames and of all frames. The class with the
    fewest frames still unplaced goes first: its groups (in a seeded-hash order, so the split is
    deterministic) each go to the split that wants that class most, ties broken by the frames
    it still wants. Groups without boxes then fill the frame shares."""
    presence, frames = group_presence(items)
    ratios = {s: r for s, r in (("train", spec.train), ("val", spec.val), ("test", spec.test)) if r > 0}
    totals = Counter()
    for counts in presence.values():
        totals.update(counts)
    want = {s: {c: r * n for c, n in totals.items()} for s, r in ratios.items()}
    want_frames = {s: r * frames.total() for s, r in ratios.items()}
    where: dict[str, str] = {}
    unplaced = sorted(frames, key=lambda g: seeded(seed, g))
    while unplaced:
        remaining = Counter()
        for group in unplaced:
            remaining.update(presence[group])
        rarest = min(remaining, key=lambda c: (remaining[c], c), default=None)
        batch = [g for g in unplaced if rarest is None or presence[g][rarest] > 0]
        for group in batch:
            split = max(ratios, key=lambda s: (want[s].get(rarest, 0.0), want_frames[s]))
            where[group] = split
            want_frames[split] -= frames[group]
            for cls, n in presence[group].items():
                want[split][cls] -= n
        unplaced = [g for g in unplaced if g not in where]
    return fill_empty_splits(where, frames, ratios)


def group_presence(items: list[Item]) -> tuple[dict[str, Counter[int]], Counter[str]]:
    """Per group: how many of its frames show each class; and its frame count."""
    presence: dict[str, Counter[int]] = defaultdict(Counter)
    frames: Counter[str] = Counter()
    for item in items:
        frames[item.group] += 1
        presence[item.group].update({int(c) for c in item.boxes[:, 0]})
    return presence, frames


def fill_empty_splits(
    where: dict[str, str], frames: Counter[str], ratios: dict[str, float]
) -> dict[str, str]:
    """A split with a share but no group takes the smallest group of the split with the most groups."""
    for split in ratios if where else ():
        members = Counter(where.values())
        donor, count = max(members.items(), key=lambda kv: (kv[1], kv[0] == "train"))
        if members[split] == 0 and count > 1:
            smallest = min((g for g, s in where.items() if s == donor), key=lambda g: (frames[g], g))
            where[smallest] = split
    return where


def seeded(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


# ---- duplicates within and across the final splits ---------------------------------------------


def check_duplicates(
    items: list[Item], rules: ValidationConfig, log: FindingLog, keep_splits: bool = False
) -> list[Item]:
    """Leakage (identical or near-identical images in two splits) first, then duplicates within a split.
    `keep_splits`: the source's own splits; split_leakage=fix reports the leakage instead of moving images."""
    if len(items) < 2:
        return items
    pairs = near_pairs(hash_bits(item.phash for item in items), rules.near_duplicate_image_distance)
    exact = {(i, j) for i, j in pairs if items[i].pixel_hash == items[j].pixel_hash}
    cross = {p for p in pairs if items[p[0]].split != items[p[1]].split}
    items, dropped = resolve_leakage(items, pairs, sorted(cross), exact, log, keep_splits)
    # a near pair is reported once, as leakage; an identical pair moved together is still a duplicate
    within = {p: d for p, d in pairs.items() if p not in cross or p in exact}
    return drop_split_duplicates(items, within, exact, dropped, log)


def resolve_leakage(
    items: list[Item],
    pairs: dict[tuple[int, int], int],
    cross: list,
    exact: set,
    log: FindingLog,
    keep_splits: bool,
) -> tuple[list[Item], set[int]]:
    action, dropped = log.action("split_leakage"), set()
    if action == "fix" and keep_splits:
        action = "keep"
    effect = {
        "fix": "moved, with its group, to the earliest split",
        "drop": "dropped",
        "keep": "kept in the source's split (data.split.move_source_images=true lets fix move it)",
    }.get(action, "kept")
    for pair in cross:
        i, j = sorted(pair, key=lambda k: (SPLITS.index(items[k].split), k))
        first, later = items[i], items[j]
        similar = likeness(pairs[pair], pair in exact)
        message = f"in {later.split}: {similar} {first.key} in {first.split}; {effect}"
        log.report("split_leakage", later.key, None, message)
        dropped.add(j)
    if action == "fix":
        return merge_leaking_groups(items, cross), set()
    return items, dropped if action == "drop" else set()


def merge_leaking_groups(items: list[Item], cross: list[tuple[int, int]]) -> list[Item]:
    """Each connected set of leaking images, with all of their groups, goes to its earliest split."""
    parent = {item.group: item.group for item in items}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for i, j in cross:
        parent[root(items[i].group)] = root(items[j].group)
    earliest: dict[str, int] = {}
    for item in items:
        r = root(item.group)
        earliest[r] = min(earliest.get(r, len(SPLITS)), SPLITS.index(item.split))
    return [replace(item, split=SPLITS[earliest[root(item.group)]]) for item in items]


def drop_split_duplicates(
    items: list[Item], pairs: dict[tuple[int, int], int], exact: set, dropped: set[int], log: FindingLog
) -> list[Item]:
    for (i, j), distance in sorted(pairs.items()):
        a, b, same = items[i], items[j], (i, j) in exact
        if i in dropped or j in dropped or a.split != b.split or (not same and a.group == b.group):
            continue  # near-identical frames of one sequence are expected; grouping keeps them together
        kind = "duplicate_image" if same else "near_duplicate_image"
        message = f"{likeness(distance, same)} {a.key} (both in {a.split})"
        if log.report(kind, b.key, None, message) != "warn":
            dropped.add(j)
    return [item for index, item in enumerate(items) if index not in dropped]


def likeness(distance: int, exact: bool) -> str:
    return "identical pixels to" if exact else f"a near-duplicate (phash distance {distance}) of"


def split_history(
    assigned: dict[str, str | None], items: list[Item], mode: str, own_splits: list[str]
) -> dict[str, str]:
    """Per split, in words: where its images came from (and, when the source's own splits were set
    aside, why), and what moved or dropped them afterwards."""
    final = {item.key: item.split for item in items}
    origin = "the source's own split" if mode == "source" else "split by group here (data.split)"
    if mode == "group" and own_splits and not {"train", "val"} <= set(own_splits):
        origin += (
            f": the source's own splits ({', '.join(own_splits)}) lack train or val. {SPLIT_MAPPING_HINT}"
        )
    history = {}
    for split in SPLITS:
        moved_in = Counter(assigned[k] for k, s in final.items() if s == split and assigned[k] != split)
        moved_out = sum(1 for k, s in assigned.items() if s == split and final.get(k, s) != s)
        dropped = sum(1 for k, s in assigned.items() if s == split and k not in final)
        changes = [f"{n} moved in from {src}" for src, n in sorted(moved_in.items())]
        changes += [f"{moved_out} moved out"] * bool(moved_out) + [f"{dropped} dropped as duplicates"] * bool(
            dropped
        )
        history[split] = f"{origin}; " + (
            ", ".join(changes) + " (split_leakage / duplicates)" if changes else "unchanged"
        )
    return history
