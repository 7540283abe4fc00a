"""Properties of the pathfinder benchmark that hold by construction (see its docstring)."""

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from diffusion_seg.data.pathfinder import (
    CELL,
    CLASS_NAMES,
    IGNORE,
    PALETTE,
    WHOLE_CELLS,
    PathfinderDataset,
    flood_oracle,
    proximity_conflict,
    render,
)
from diffusion_seg.bench import oracle
from diffusion_seg.config import compose_config
from diffusion_seg.data.transforms import build_train_transform
from diffusion_seg.errors import ConfigError
from diffusion_seg.studies import gather

FAR = 3 * CELL  # px along the path: "far" pixels for these tests


def other_classes(classes: np.ndarray) -> np.ndarray:
    """Every cued curve gets a different class (1→2→3→1)."""
    return classes % 3 + 1


@pytest.mark.parametrize("index", range(6))
def test_changing_only_the_cue_flips_far_labels_and_nothing_else(index):
    ds = PathfinderDataset("train", length=8, max_distance=8)
    a = ds.sample(index)
    b = ds.sample(index, override_classes=other_classes(a.classes))
    assert np.array_equal(a.cue, b.cue) and a.cue.any()
    # The image changes on the cue squares only.
    assert np.array_equal(a.image[~a.cue], b.image[~b.cue])
    assert not np.array_equal(a.image[a.cue], b.image[b.cue])
    # Geometry is the same; every labelled pixel of a cued curve changes class.
    assert np.array_equal(a.path_id, b.path_id) and np.array_equal(a.distance, b.distance)
    cued = (a.label >= 1) & (a.label <= 3)
    assert np.array_equal(cued, (b.label >= 1) & (b.label <= 3))
    assert np.array_equal(b.label[cued], other_classes(a.label[cued].astype(np.int64)))
    assert np.array_equal(a.label[~cued], b.label[~cued])
    far = cued & (a.distance >= FAR)
    assert far.sum() > 100  # far pixels exist, and they flip
    assert (a.label[far] != b.label[far]).all()


@pytest.mark.parametrize("half", [4, 16])  # 9×9 and 33×33 patches
def test_local_patch_around_far_pixels_is_identical_for_every_class(half):
    ds = PathfinderDataset("val", length=8, max_distance=8)
    checked = 0
    for index in range(4):
        renders = [ds.sample(index, override_classes=[c] * 3) for c in (1, 2, 3)]
        ref = renders[0]
        padded = [np.pad(r.image, ((half, half), (half, half), (0, 0))) for r in renders]
        cue = np.pad(ref.cue, half)
        ys, xs = np.nonzero((ref.label >= 1) & (ref.label <= 3) & (ref.distance >= FAR))
        assert {int(r.label[ys[0], xs[0]]) for r in renders} == {1, 2, 3}
        for y, x in zip(ys[::7], xs[::7]):
            window = (slice(y, y + 2 * half + 1), slice(x, x + 2 * half + 1))
            if cue[window].any():
                continue  # a cue in sight: not a blind patch (only possible for big patches)
            patches = [p[window] for p in padded]
            assert all(np.array_equal(patches[0], p) for p in patches[1:])
            checked += 1
    assert checked > 50


def test_no_cue_inside_the_9x9_patch_of_a_far_pixel():
    """So the patch identity above is about blind patches: no cue of any path in sight."""
    ds = PathfinderDataset("train", length=16, max_distance=8)
    for index in range(16):
        s = ds.sample(index)
        far = np.argwhere((s.path_id >= 1) & (s.distance >= FAR) & (s.label != IGNORE))
        cues = np.argwhere(s.cue)
        assert len(far) and len(cues)
        assert np.abs(far[:, None, :] - cues[None, :, :]).max(-1).min() > 4


def test_curves_never_touch_at_feature_resolution():
    ds = PathfinderDataset("train", length=32, size=96, max_distance=10, num_distractors=2)
    for index in range(32):
        nodes = ds.sample(index).nodes
        assert all(len(n) == 11 for n in nodes)
        for i, a in enumerate(nodes):
            steps = np.abs(np.diff(a, axis=0)).sum(1)
            assert (steps == 1).all()  # one cell per step
            # no shortcut through the curve itself: non-consecutive nodes are 2+ cells apart
            cheb = np.abs(a[:, None] - a[None]).max(-1)
            gap = np.abs(np.arange(len(a))[:, None] - np.arange(len(a))[None])
            assert (cheb[gap > 2] >= 2).all()
            for b in nodes[i + 1 :]:
                assert np.abs(a[:, None] - b[None]).max(-1).min() >= 2


def test_deterministic_across_calls_and_instances_splits_and_seeds_differ():
    a = PathfinderDataset("train", length=4, sample_seed=3)
    b = PathfinderDataset("train", length=4, sample_seed=3)
    for i in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(a.generate(i), b.generate(i)))
        assert all(np.array_equal(x, y) for x, y in zip(a.generate(i), a.generate(i)))
    first = a.generate(0)[0]
    assert not np.array_equal(first, a.generate(1)[0])
    other_seed = PathfinderDataset("train", length=4, sample_seed=4).generate(0)[0]
    assert not np.array_equal(first, other_seed)
    for split in ("val", "test"):
        other_split = PathfinderDataset(split, length=4, sample_seed=3).generate(0)[0]
        assert not np.array_equal(first, other_split)
    # The same seed sequence through the functional API gives the same sample.
    assert np.array_equal(render([3, 0, 0]).image, first)


def test_the_knob_moves_the_distance_distribution():
    stats = {}
    for md in (2, 4, 8, 12):
        ds = PathfinderDataset("val", length=24, size=96, max_distance=md, ignore_near=1)
        d = []
        for i in range(24):
            s = ds.sample(i)
            labelled = (s.label >= 1) & (s.label <= 3)
            d.append(s.distance[labelled] / CELL)
            assert (md - 0.25) * CELL < s.distance.max() <= md * CELL
        d = np.concatenate(d)
        assert d.min() >= 1.0  # ignore_near = 1 cell
        stats[md] = (d.mean(), (d >= 4).mean())
    means = [stats[md][0] for md in (2, 4, 8, 12)]
    assert means == sorted(means) and means[-1] > 2.5 * means[0]
    assert stats[2][1] == 0.0 and stats[8][1] > 0.4 and stats[12][1] > 0.6


def test_ignore_near_changes_labels_near_the_cue_only():
    full = PathfinderDataset("val", length=4)  # ignore_near=0: only the cue squares ignored
    far_only = PathfinderDataset("val", length=4, ignore_near=4)
    for i in range(4):
        a, b = full.sample(i), far_only.sample(i)
        assert np.array_equal(a.image, b.image)
        labelled = (a.label >= 1) & (a.label <= 3)
        assert (a.distance[labelled] < CELL).any() and (a.label[a.cue] == IGNORE).all()
        near = labelled & (a.distance < 4 * CELL)
        assert (b.label[near] == IGNORE).all()
        assert np.array_equal(a.label[~near], b.label[~near])


def test_interleave_puts_other_cues_nearer_than_the_own_one():
    def mean_conflict(interleave):
        ds = PathfinderDataset("train", length=40, interleave=interleave)
        return np.mean([proximity_conflict(ds.sample(i).nodes) for i in range(40)])

    plain, interleaved = mean_conflict(1), mean_conflict(4)
    assert interleaved > plain + 0.1


def test_misleading_pixels_are_common_far_from_the_cue():
    """Pixels whose straight-line nearest cue has another class: only path-following gets
    them right. At the defaults they are ~30 % of the labelled path pixels, mostly far."""
    ds = PathfinderDataset("val", length=40)
    near_total = near_bad = far_total = far_bad = 0
    for i in range(40):
        s = ds.sample(i)
        labelled = (s.label >= 1) & (s.label <= 3)
        bad = labelled & (s.nearest_cue_class() != s.label)
        near, far = labelled & (s.distance < 2 * CELL), labelled & (s.distance >= 6 * CELL)
        near_total, near_bad = near_total + near.sum(), near_bad + (bad & near).sum()
        far_total, far_bad = far_total + far.sum(), far_bad + (bad & far).sum()
        # the nearest cue of a pixel on the cue square is that cue
        assert (s.nearest_cue_class()[s.cue & (s.path_id >= 1)] ==
                s.classes[s.path_id[s.cue & (s.path_id >= 1)] - 1]).mean() > 0.95
    assert near_bad / near_total < 0.05
    assert far_bad / far_total > 0.4


def test_default_layout_always_fits():
    ds = PathfinderDataset("train", length=300)
    for i in range(300):
        _, label = ds.generate(i)
        # the paths are drawn: cue-coloured path pixels, and nothing but the four classes and ignore
        values = set(np.unique(label).tolist())
        assert values & {1, 2, 3} and values <= {0, 1, 2, 3, 255}, (i, values)


def test_shapes_values_and_class_balance():
    ds = PathfinderDataset("val", length=64, size=96)
    counts = np.zeros(256, dtype=np.int64)
    for i in range(len(ds)):
        image, label = ds.generate(i)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert label.shape == (96, 96) and label.dtype == np.uint8
        counts += np.bincount(label.ravel(), minlength=256)
    assert set(np.flatnonzero(counts)) == {0, 1, 2, 3, IGNORE}
    per_class = counts[1:4]
    assert per_class.max() < 1.6 * per_class.min()
    assert 0.02 < per_class.sum() / counts.sum() < 0.2
    item = ds[0]
    assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (96, 96) and item["mask"].dtype == torch.long
    assert item["name"] == "val_00000"
    assert len(ds.class_names) == ds.num_classes == len(CLASS_NAMES) == len(PALETTE) == 4


def test_eval_length_and_index_range():
    assert len(PathfinderDataset("train", length=10, eval_length=3)) == 10
    assert len(PathfinderDataset("test", length=10, eval_length=3)) == 3
    with pytest.raises(IndexError):
        PathfinderDataset("val", length=2)[2]


@pytest.mark.parametrize("size", [64, 128])
def test_other_sizes(size):
    image, label = PathfinderDataset("train", length=1, size=size, max_distance=6).generate(0)
    assert image.shape == (size, size, 3) and label.shape == (size, size)


def test_clutter_options():
    base = PathfinderDataset("train", length=8, size=96, num_distractors=2)
    ignored = PathfinderDataset(
        "train", length=8, size=96, num_distractors=2, distractor_label="ignore"
    )
    for i in range(8):
        s, t = base.sample(i), ignored.sample(i)
        distractor = s.path_id > len(s.classes)
        assert distractor.any()
        assert (s.label[distractor] == 0).all() and (t.label[distractor] == IGNORE).all()
        assert np.array_equal(s.image, t.image)
    quiet = PathfinderDataset("train", length=1, noise=0.0).sample(0)
    assert len(np.unique(quiet.image.reshape(-1, 3), axis=0)) <= 5  # flat colours only
    # Crossings allowed: curves may overlap; shared pixels are ignored, never mislabelled.
    crossing = PathfinderDataset(
        "train", length=64, num_paths=3, num_distractors=3, max_distance=10, crossings=True
    )
    overlaps = 0
    for i in range(64):
        s = crossing.sample(i)
        overlaps += sum(
            int(np.abs(a[:, None] - b[None]).max(-1).min() == 0)
            for j, a in enumerate(s.nodes) for b in s.nodes[j + 1 :]
        )
    assert overlaps > 0


def test_bad_options_are_reported():
    with pytest.raises(ValueError, match="split 'dev'"):
        PathfinderDataset("dev")
    with pytest.raises(ValueError, match="distractor_label"):
        PathfinderDataset(distractor_label="other")
    for option, value in [("width", 9), ("interleave", 0), ("jitter", 3.0), ("size", 16),
                          ("max_distance", 0), ("cue_size", 13)]:
        with pytest.raises(ValueError, match=f"dataset.{option}={value}"):
            PathfinderDataset(**{option: value})
    with pytest.raises(ValueError, match="cannot lay out"):
        PathfinderDataset(size=32, max_distance=12, num_paths=3).generate(0)
    with pytest.raises(ValueError, match="classes"):
        PathfinderDataset().sample(0, override_classes=[1, 2])


def test_items_carry_the_context_maps():
    ds = PathfinderDataset("val", length=4)
    any_misleading = False
    for i in range(4):
        s, item = ds.sample(i), ds[i]
        path = (s.label >= 1) & (s.label <= 3)
        distance = item["cue_distance"].numpy()
        assert item["cue_distance"].dtype == torch.float32 and item["misleading"].dtype == torch.bool
        assert np.allclose(distance[s.distance >= 0], s.distance[s.distance >= 0] / CELL)
        assert (distance[s.distance < 0] == -1).all()
        misleading = item["misleading"].numpy()
        assert not misleading[~path].any()
        assert np.array_equal(misleading[path], (s.nearest_cue_class() != s.label)[path])
        any_misleading |= misleading.any()
    assert any_misleading


def test_flips_move_the_context_maps_with_the_label():
    transform = build_train_transform(64, (0.5,) * 3, (0.25,) * 3, scale_range=(1.0, 1.0))
    ds = PathfinderDataset("train", length=1, transform=transform)
    s = ds.sample(0)
    path = (s.label >= 1) & (s.label <= 3)
    seen = set()
    for seed in range(8):
        transform.set_random_seed(seed)
        item = ds[0]
        flipped = not np.array_equal(item["mask"].numpy(), s.label)
        flip = (lambda a: a[:, ::-1]) if flipped else (lambda a: a)
        assert np.array_equal(item["mask"].numpy(), flip(s.label))
        assert np.array_equal(item["cue_distance"].numpy(), flip(np.where(
            s.distance >= 0, s.distance / CELL, -1).astype(np.float32)))
        assert np.array_equal(item["misleading"].numpy(),
                              flip(path & (s.nearest_cue_class() != s.label)))
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("geometry, ceiling", [({}, (0.5, 0.8)), (WHOLE_CELLS, (0.85, 0.97))],
                         ids=["thin curves", "whole cells"])
def test_flood_oracle_solves_far_and_misleading_pixels_without_reading_labels(geometry, ceiling):
    ds = PathfinderDataset("test", length=8, max_distance=8, **geometry)
    metrics = oracle.evaluate(ds)
    assert metrics["test/color_acc/far_misleading"] == 1.0 and metrics["test/color_n/far_misleading"] > 500
    assert metrics["test/color_acc/d6+"] == 1.0 and metrics["test/grid_mIoU"] == 1.0
    # Every cell right, yet a cell's logits upsampled bilinearly cannot draw a thin path,
    # nor the corners and ends of a whole-cell one: pixel mIoU has a ceiling below 100.
    assert metrics["test/path_recall"] > 0.95 and ceiling[0] < metrics["test/mIoU"] < ceiling[1]
    s = ds.sample(0)
    blind = dataclasses.replace(s, label=np.zeros_like(s.label), distance=-np.ones_like(s.distance))
    assert np.array_equal(flood_oracle(blind), flood_oracle(s))
    # The cue's colour is the only class information it uses.
    other = ds.sample(0, override_classes=other_classes(s.classes))
    assert np.array_equal(flood_oracle(other), other_classes(flood_oracle(s)) * (flood_oracle(s) > 0))


def test_oracle_rows_join_a_study_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for job, distance in enumerate((2, 8)):
        cfg = compose_config(["dataset=pathfinder", f"dataset.max_distance={distance}",
                              "dataset.eval_length=2"])
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        overrides = ["experiment=pathfinder_fcn", f"dataset.max_distance={distance}",
                     "seed=1", "study=builtin_heads_difficulty"]
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        config = {"study": {"name": "builtin_heads_difficulty"},
                  "dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}
        (sweep / str(job) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    oracle.main(["--sweep", str(sweep)])
    runs = {r.path.name: r for r in gather([sweep])}
    assert {"oracle_0", "oracle_1"} <= set(runs)
    far = runs["oracle_1"]
    assert far.status == "finished" and far.metrics["test/color_acc/d6+"] == 1.0
    assert "dataset.max_distance=8" in far.setting and oracle.ROW in far.setting


def test_cache_renders_each_sample_once_and_changes_nothing(monkeypatch):
    plain, cached = PathfinderDataset("train", length=3), PathfinderDataset("train", length=3, cache=True)
    renders = []
    original = cached.sample
    monkeypatch.setattr(cached, "sample", lambda i: renders.append(i) or original(i))
    for _ in range(2):
        for i in range(3):
            a, b = plain[i], cached[i]
            assert a.keys() == b.keys() and a["name"] == b["name"]
            assert all(torch.equal(a[k], b[k]) for k in a if k != "name")
    assert renders == [0, 1, 2]


def test_the_transform_never_writes_into_the_cache():
    transform = build_train_transform(64, (0.5,) * 3, (0.25,) * 3, scale_range=(1.0, 1.0))
    ds = PathfinderDataset("train", length=2, cache=True, transform=transform)
    for seed in range(4):
        transform.set_random_seed(seed)
        ds[0], ds[1]
    for i in range(2):
        image, label, maps = ds._cache[i]
        fresh = ds.sample(i)
        assert np.array_equal(image, fresh.image) and np.array_equal(label, fresh.label)


def test_the_benchmark_config_draws_every_path_as_whole_cells():
    node = compose_config(["dataset=pathfinder"]).dataset
    assert {k: node[k] for k in WHOLE_CELLS} == WHOLE_CELLS
    ds = PathfinderDataset("val", length=8, **WHOLE_CELLS)
    for i in range(8):
        s = ds.sample(i)
        cells = s.label.reshape(8, CELL, 8, CELL).transpose(0, 2, 1, 3).reshape(64, -1)
        assert all(len(np.unique(c)) == 1 for c in cells)  # one class (or ignore) per cell


def test_oracle_reports_an_impossible_layout_as_a_config_error():
    with pytest.raises(ConfigError, match="dataset.max_distance"):
        oracle.main(["dataset.max_distance=30", "dataset.eval_length=1"])


def test_fresh_samples_render_new_training_images_from_the_second_epoch():
    fixed = PathfinderDataset("train", length=3, cache=True)
    fresh = PathfinderDataset("train", length=3, cache=True, fresh_samples=True)
    for i in range(3):  # epoch 0 is the fixed set
        assert torch.equal(fixed[i]["image"], fresh[i]["image"])
    later = [fresh[3 + i] for i in range(3)] + [fresh[6]]  # epoch 1, and epoch 2's first
    assert all(not torch.equal(item["image"], fixed[i % 3]["image"]) for i, item in enumerate(later))
    assert not torch.equal(later[0]["image"], later[3]["image"])
    assert torch.equal(fresh[4]["image"], PathfinderDataset("train", length=3, fresh_samples=True)[4]["image"])
    assert sorted(fresh._cache) == [0, 1, 2]  # later epochs' images are never kept
    with pytest.raises(IndexError):
        fixed[3]
    with pytest.raises(IndexError):  # the evaluation splits stay fixed
        PathfinderDataset("val", length=3, eval_length=2, fresh_samples=True)[2]


def test_training_with_fresh_samples_sees_each_epochs_own_images(tmp_path):
    """Lightning sets the sampler's epoch: epoch e trains on indices e·length .. e·length + length − 1."""
    import lightning as L
    from tests.conftest import compose_config as compose_run
    from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
    from diffusion_seg.lightning.datamodule import NewSamplesEachEpoch

    class Names(L.Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.setdefault(trainer.current_epoch, []).extend(batch["name"])

    cfg = compose_run(["experiment=pathfinder_fcn", "dataset.length=4", "dataset.batch_size=2",
                       "dataset.fresh_samples=true"], output_dir=tmp_path)
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    task = build_task(cfg, build_segmentor(cfg, datamodule.num_classes, backbone=backbone),
                      datamodule.class_names)
    names = Names()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[names], default_root_dir=tmp_path)
    trainer.fit(task, datamodule=datamodule)
    assert isinstance(trainer.train_dataloader.sampler, NewSamplesEachEpoch)
    for epoch in range(3):
        assert sorted(names.seen[epoch]) == [f"train_{epoch * 4 + i:05d}" for i in range(4)]


def test_beyond_reach_marks_the_path_pixels_whose_own_cue_is_farther_than_reach_px():
    ds = PathfinderDataset("test", length=4, size=128, max_distance=24, reach_px=102, **WHOLE_CELLS)
    marked = 0
    for i in range(4):
        s, item = ds.sample(i), ds[i]
        offset = s.own_cue_offset(8)
        path = (s.label >= 1) & (s.label <= 3)
        assert np.array_equal(item["beyond_reach"].numpy(), path & (offset > 102))
        for k, (y, x) in enumerate(s.cue_centres):  # next to its own cue: an offset of 0 or 1 px
            own = path & (s.path_id == k + 1)
            assert offset[own].min() <= 1 and (offset[own] >= 0).all()
        marked += int(item["beyond_reach"].sum())
    assert marked > 0
    assert not PathfinderDataset("test", length=4, size=128, max_distance=24)[0]["beyond_reach"].any()
    with pytest.raises(ValueError, match="dataset.reach_px=-1"):
        PathfinderDataset("test", length=4, reach_px=-1)


def test_fcn_on_the_tiny_backbone_reads_no_input_farther_than_102_px():
    """The receptive field behind reach_px: the input pixels whose gradient reaches one output
    pixel of FCN (logits upsampled bilinearly, as evaluated), with every weight positive,
    ReLU as identity and max pooling as average pooling (so no gradient is lost), lie within
    102 px of it (Chebyshev), and some lie exactly 102 px away."""
    import torch.nn.functional as F
    from torch import nn

    from diffusion_seg.builders import build_backbone, build_segmentor

    def linear(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.ReLU, nn.Dropout, nn.Dropout2d)):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
            else:
                linear(child)

    cfg = compose_config(["experiment=pathfinder_fcn"])
    net = build_segmentor(cfg, 4, backbone=build_backbone(cfg)).eval()
    linear(net)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.01)
    size, reach = 288, 0
    for pixel in range(136, 144):  # every position inside one 8-px cell
        image = torch.ones(1, 3, size, size, requires_grad=True)
        logits = F.interpolate(net(image).logits, size=(size, size), mode="bilinear", align_corners=False)
        logits[0, :, pixel, pixel].sum().backward()
        rows = torch.nonzero(image.grad[0].abs().sum((0, 2)) > 0).flatten()
        reach = max(reach, pixel - int(rows.min()), int(rows.max()) - pixel)
    assert reach == 102
