"""`python -m diffusion_seg.check` reports counts, class frequencies and every
problem; `python -m diffusion_seg.bench data` prints its table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion_seg.bench import data as bench_data
from diffusion_seg import testing as fixtures
from diffusion_seg.data.base import save_label_png
from diffusion_seg.cli.check import main


def test_check_clean_tree(tmp_path, capsys):
    written = fixtures.make_person_part(tmp_path, counts={"train": 3, "val": 2})
    code = main(["dataset=person_part", f"dataset.root={tmp_path}", "workers=2"])
    out = capsys.readouterr().out
    assert code == 0 and "no problems found" in out
    assert "## split train: 3 samples" in out and "## split val: 2 samples" in out
    assert "note: the full release has 1716 samples in train" in out
    # The frequency table counts what was written.
    labels = np.concatenate([v.ravel() for v in written["train"].values()])
    head = 100.0 * (labels == 1).sum() / labels.size
    images = sum(int((v == 1).any()) for v in written["train"].values())
    assert f"| 1 | head | {head:.3f} | {images} |" in out


def test_check_lists_every_problem(tmp_path, capsys):
    written = fixtures.make_voc_aug(tmp_path, counts={"trainaug": 4, "val": 2})
    base = tmp_path / "VOCdevkit" / "VOC2012"
    ids = list(written["trainaug"])
    (base / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"broken")
    (base / "SegmentationClassAug" / f"{ids[1]}.png").unlink()
    w, h = Image.open(base / "JPEGImages" / f"{ids[2]}.jpg").size
    label = np.zeros((h, w), np.uint8)
    label[0, 0] = 77
    save_label_png(base / "SegmentationClassAug" / f"{ids[2]}.png", label)
    code = main(["dataset=voc_aug", f"dataset.root={tmp_path}", "splits=[trainaug,val,test]"])
    out = capsys.readouterr().out
    assert code == 1 and "4 problem(s) found" in out
    assert f"missing file {base / 'SegmentationClassAug' / ids[1]}.png" in out
    assert f"cannot read image {base / 'JPEGImages' / ids[0]}.jpg" in out
    assert f"{ids[2]}.png has label values [77]" in out
    assert "## split trainaug: 3 samples" in out and "scanned 1 samples" in out
    assert "ImageSets/Segmentation/test.txt does not exist" in out


def test_check_bad_dataset_name_and_renamed_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset=nosuch"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: dataset=nosuch: there is no conf/dataset/nosuch.yaml (choices: ade20k, folder,")
    with pytest.raises(SystemExit):
        main(["dataset=voc_aug", "dataset.dataset.root=/data/voc"])
    assert "error: dataset.dataset.root was renamed: use dataset.root" in capsys.readouterr().err


def test_bench_data_prints_a_row_per_dataset(capsys):
    bench_data.main(["--datasets", "voc_aug", "folder", "--samples", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| dataset | image | crop | scale |" in out
    assert "| voc_aug | 500×375 | 321 | 0.5–1.4 |" in out and "| folder | 1024×768 | 512 |" in out
