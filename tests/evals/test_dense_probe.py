"""Dense-probe labels from the exact object masks, and the probe on separable patch features."""
import numpy as np
import pytest

from mmfm.data import synthetic
from mmfm.evals.dense_probe import dense_probe, patch_labels


def test_object_mask_is_the_rendered_footprint():
    rng = np.random.default_rng(0)
    for _ in range(20):
        objects = synthetic.sample_objects(rng, 64, int(rng.integers(1, 4)))
        mask = synthetic.object_mask(objects, 64)
        image = np.asarray(synthetic.render(objects, 64, background=0))  # no jitter
        for i, obj in enumerate(objects):
            on = mask == i + 1
            assert on.sum() > 0.2 * (obj["bbox"][2] - obj["bbox"][0]) ** 2
            # Exactly the object's pixels: one colour (no jitter), never the black background.
            colours = np.unique(image[on], axis=0)
            assert len(colours) == 1 and colours.any()
            x0, y0, x1, y1 = obj["bbox"]
            assert not on[:y0].any() and not on[y1:].any() and not on[:, :x0].any() \
                and not on[:, x1:].any()
        assert (image[mask == 0] == 0).all()


def _brute_labels(mask, values, grid, min_cover):
    p = mask.shape[0] // grid
    out = []
    for r in range(grid):
        for c in range(grid):
            block = mask[r * p:(r + 1) * p, c * p:(c + 1) * p].ravel()
            best, best_n = 0, 0
            for i in range(1, len(values) + 1):
                n = int(np.sum(block == i))
                if n > best_n:
                    best, best_n = i, n
            out.append(values[best - 1] + 1 if best and best_n >= min_cover * p * p else 0)
    return np.array(out)


@pytest.mark.parametrize("grid", [2, 4, 8])
def test_patch_labels_match_a_pixel_loop(grid):
    rng = np.random.default_rng(grid)
    for _ in range(30):
        objects = synthetic.sample_objects(rng, 64, int(rng.integers(1, 4)))
        mask = synthetic.object_mask(objects, 64)
        values = [synthetic.COLORS.index(o["color"]) for o in objects]
        for cover in (0.01, 0.25, 0.6):
            np.testing.assert_array_equal(patch_labels(mask, values, grid, cover),
                                          _brute_labels(mask, values, grid, cover))
    with pytest.raises(ValueError, match="divisible"):
        patch_labels(np.zeros((64, 64), np.uint8), [], 5)


def test_dense_probe_reads_a_linear_code_and_fails_on_noise():
    rng = np.random.default_rng(0)
    n, patches, width, classes = 200, 16, 12, 5
    labels = rng.integers(0, classes, (n, patches))
    code = rng.normal(size=(classes, width))
    tokens = code[labels] + 0.3 * rng.normal(size=(n, patches, width))
    res = dense_probe(tokens[:150], labels[:150], tokens[150:], labels[150:],
                      num_classes=classes, max_train_patches=1000)
    assert res["accuracy"] > 0.95 and res["mean_per_class_recall"] > 0.95
    assert res["num_train_patches"] == 1000 and res["num_test_patches"] == 50 * patches
    noise = rng.normal(size=tokens.shape)
    bad = dense_probe(noise[:150], labels[:150], noise[150:], labels[150:], num_classes=classes)
    assert bad["mean_per_class_recall"] < 0.4
