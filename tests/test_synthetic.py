import numpy as np
import pytest

from diffusion_seg.data.synthetic import CLASS_NAMES, SCENE_COLOURS, SyntheticContextDataset


def test_deterministic_per_seed_split_and_index():
    a = SyntheticContextDataset("train", length=4, sample_seed=3)
    b = SyntheticContextDataset("train", length=4, sample_seed=3)
    for i in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(a.generate(i), b.generate(i)))
    other_seed = SyntheticContextDataset("train", length=4, sample_seed=4).generate(0)
    other_split = SyntheticContextDataset("val", length=4, sample_seed=3).generate(0)
    assert not np.array_equal(a.generate(0)[0], other_seed[0])
    assert not np.array_equal(a.generate(0)[0], other_split[0])


def test_labels_decided_by_far_away_frame_not_by_local_texture():
    ds = SyntheticContextDataset("train", length=64, size=96)
    inside = {"red": [], "blue": []}
    for i in range(64):
        image, label = ds.generate(i)
        frame_colour = tuple(int(c) for c in image[0, 0])
        scene = next(k for k, v in SCENE_COLOURS.items() if v == frame_colour)
        classes = set(np.unique(label).tolist()) - {0}
        allowed = {1, 3} if scene == "red" else {2, 4}
        assert classes <= allowed  # the frame fixes the scene half of every object class
        inside[scene].append(image[label > 0].astype(float))
    red, blue = (np.concatenate(v) for v in inside.values())
    # Same texture statistics inside objects of either scene: the local patch is ambiguous.
    assert np.allclose(red.mean(0), blue.mean(0), atol=2.0)
    assert np.allclose(red.std(0), blue.std(0), atol=2.0)


def test_every_class_occurs_and_values_stay_in_range():
    ds = SyntheticContextDataset("val", length=48)
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds.generate(i)[1]).tolist())
    assert seen == set(range(len(CLASS_NAMES)))


def test_bad_split_is_reported():
    with pytest.raises(ValueError, match="split 'dev'"):
        SyntheticContextDataset("dev")
