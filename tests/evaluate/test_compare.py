"""The paired bootstrap interval: differences certain by construction, and none at all."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import compare

IMAGES = 40


def scene(seed: int) -> list[np.ndarray]:
    """Ground truth of IMAGES frames, 0-3 objects each: xyxy, class."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(IMAGES):
        corners = rng.uniform(0, 40, size=(rng.integers(0, 4), 2))
        sizes = rng.uniform(8, 20, size=corners.shape)
        classes = rng.integers(0, 3, size=(len(corners), 1))
        frames.append(np.hstack([corners, corners + sizes, classes]).astype(float))
    return frames


def perfect(truth: np.ndarray) -> np.ndarray:
    """Every object found, confidence 0.9."""
    return np.hstack([truth[:, :4], np.full((len(truth), 1), 0.9), truth[:, 4:]])


def shifted(truth: np.ndarray) -> np.ndarray:
    """A broken detector: each box moved by its own width (IoU 0) and given the wrong class."""
    boxes = perfect(truth)
    width = boxes[:, 2:3] - boxes[:, 0:1]
    boxes[:, [0, 2]] += width
    boxes[:, 5] = (boxes[:, 5] + 1) % 3
    return boxes


def counts(frames: list[np.ndarray], model) -> np.ndarray:
    return np.array([compare.image_counts(model(t), t) for t in frames])


def test_image_counts_match_by_class_and_iou():
    truth = np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1]], dtype=float)
    predicted = np.array([[0, 0, 10, 11, 0.8, 0], [20, 20, 30, 30, 0.9, 0], [0, 0, 10, 10, 0.3, 0]])
    assert compare.image_counts(predicted, truth) == (1, 2, 1)  # the class-0 box on object 1 misses
    assert compare.image_counts(np.zeros((0, 6)), truth) == (0, 0, 2)
    assert compare.image_counts(predicted, np.zeros((0, 5))) == (0, 3, 0)


def test_broken_champion_loses_with_an_interval_far_from_zero():
    frames = scene(0)
    champion, challenger = counts(frames, shifted), counts(frames, perfect)
    interval = compare.paired_bootstrap(champion, challenger)
    assert interval.delta == pytest.approx(1.0)  # F1 1 against 0, by construction
    assert interval.excludes_zero() and interval.clears(0.5)
    assert interval.low <= interval.delta <= interval.high


def test_identical_models_give_an_interval_around_zero_and_no_promotion():
    frames = scene(1)
    champion = counts(frames, perfect)
    interval = compare.paired_bootstrap(champion, champion.copy())
    assert interval.low <= 0 <= interval.high and not interval.excludes_zero()
    assert not interval.clears(0.005)


def test_equal_models_erring_on_different_images_do_not_clear_a_margin():
    """Same quality, errors on different halves of the images: the interval straddles zero."""
    frames = scene(2)
    good, bad = counts(frames, perfect), counts(frames, shifted)
    half = IMAGES // 2
    champion = np.vstack([good[:half], bad[half:]])
    challenger = np.vstack([bad[:half], good[half:]])
    interval = compare.paired_bootstrap(champion, challenger)
    assert interval.low < 0 < interval.high and not interval.clears(0.005)


def test_the_seed_fixes_the_interval_and_shapes_are_checked():
    frames = scene(3)
    a, b = counts(frames, shifted), counts(frames, perfect)
    assert compare.paired_bootstrap(a, b, seed=7) == compare.paired_bootstrap(a, b, seed=7)
    with pytest.raises(ValueError, match="same images"):
        compare.paired_bootstrap(a, b[:-1])


def test_a_lucky_seed_clears_alone_but_not_beside_an_unlucky_one():
    """`retrain --seeds`: one training of the recipe finds everything, another nothing. Alone, the
    lucky one wins by 0.5 on every resample; with both seeds the mean equals the champion, and
    resampling the seeds spans both outcomes, so the interval does not clear a margin."""
    frames = scene(4)
    good, bad = counts(frames, perfect), counts(frames, shifted)
    half = IMAGES // 2
    champion = np.vstack([good[:half], bad[half:]])  # right on half the images: F1 near 0.5
    alone = compare.paired_bootstrap(champion, good)
    assert alone.clears(0.3) and alone.seeds == 1
    both = compare.paired_bootstrap(champion, np.stack([good, bad]))
    assert both.seeds == 2 and both.delta == pytest.approx((1.0 + 0.0) / 2 - compare.f1(champion), abs=1e-5)
    assert both.low < -0.3 and both.high > 0.3 and not both.clears(0.005)


def test_seeds_that_agree_give_the_single_seed_verdict():
    frames = scene(5)
    champion, challenger = counts(frames, shifted), counts(frames, perfect)
    interval = compare.paired_bootstrap(champion, np.stack([challenger] * 3))
    assert interval.seeds == 3 and interval.delta == pytest.approx(1.0) and interval.clears(0.5)
    with pytest.raises(ValueError, match=r"\(seeds, images, 3\)"):
        compare.paired_bootstrap(champion, np.stack([challenger[:-1]] * 2))


def test_two_recipes_each_over_seeds_are_compared_on_their_means():
    """The plan benchmark: both sides trained with several seeds. The same two outcomes on each
    side give an interval around 0; a side whose every seed is right clears any margin."""
    frames = scene(6)
    good, bad = counts(frames, perfect), counts(frames, shifted)
    same = compare.paired_bootstrap(np.stack([good, bad]), np.stack([bad, good]))
    assert same.delta == pytest.approx(0.0, abs=1e-9) and same.low < 0 < same.high
    better = compare.paired_bootstrap(np.stack([bad, bad, bad]), np.stack([good, good]))
    assert better.delta == pytest.approx(1.0) and better.clears(0.5) and better.seeds == 2
