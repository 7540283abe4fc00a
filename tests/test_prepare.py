"""The converters on tiny inputs in the releases' real formats (.mat written with scipy,
the Detail JSON with its schema and compressed RLE), checked pixel by pixel."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from scipy.io import savemat

from diffusion_seg import testing as fixtures
from diffusion_seg.data.base import read_mask, read_split_list, save_label_png
from diffusion_seg.cli.prepare import main
from diffusion_seg.data.ade20k import ADE20K
from diffusion_seg.data.convert import rle_decode
from diffusion_seg.data.pascal_context import PascalContext
from diffusion_seg.data.person_part import PersonPart
from diffusion_seg.data.voc import VOCAug


def run(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of the command: 0, or 2 with one ``error:`` message."""
    try:
        code = main([*args, "--workers", "1"])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 0 or err.startswith("error: "), err
    return code, err


# ---------------------------------------------------------------------------------------
# VOC aug


def test_voc_aug_converts_sbd_mats_and_builds_trainaug(tmp_path, capsys):
    release = fixtures.make_voc2012_sbd_release(tmp_path)
    voc, sbd, lists, labels = release["voc"], release["sbd"], release["lists"], release["labels"]
    code, err = run(capsys, "voc_aug", "--voc", str(voc), "--sbd", str(sbd), "--allow-partial")
    assert code == 0, err

    expected = (set(lists["voc_train"]) | set(lists["sbd_train"]) | set(lists["sbd_val"])) - set(
        lists["voc_val"]
    )
    trainaug = read_split_list(voc / "ImageSets/Segmentation/trainaug.txt")
    assert trainaug == sorted(expected)
    assert lists["voc_val"][0] in lists["sbd_val"] and lists["voc_val"][0] not in trainaug
    for i in set(labels["sbd"]) | set(labels["voc"]):
        # VOC's own label wins where both annotate an image (finer, with the 255 band).
        source = labels["voc"][i] if i in labels["voc"] else labels["sbd"][i]
        np.testing.assert_array_equal(read_mask(voc / "SegmentationClassAug" / f"{i}.png"), source)
    assert len(VOCAug(tmp_path, "trainaug")) == len(expected)
    assert len(VOCAug(tmp_path, "val")) == len(lists["voc_val"])


def test_voc_aug_refuses_a_partial_tree_without_the_flag(tmp_path, capsys):
    release = fixtures.make_voc2012_sbd_release(tmp_path)
    code, err = run(capsys, "voc_aug", "--voc", str(release["voc"]), "--sbd", str(release["sbd"]))
    assert code == 2
    assert "has 8 ids; the full release gives 10,582" in err and "--allow-partial" in err
    assert not (release["voc"] / "ImageSets/Segmentation/trainaug.txt").exists()


def test_voc_aug_names_bad_and_missing_labels(tmp_path, capsys):
    release = fixtures.make_voc2012_sbd_release(tmp_path)
    voc, sbd, lists = release["voc"], release["sbd"], release["lists"]
    bad = lists["sbd_train"][0]
    label = np.zeros((10, 12), np.uint8)
    label[2, 3] = 33
    savemat(str(sbd / "cls" / f"{bad}.mat"), {"GTcls": {"Segmentation": label}})
    code, err = run(capsys, "voc_aug", "--voc", str(voc), "--sbd", str(sbd), "--allow-partial")
    assert code == 2 and f"{bad}.mat: label values [33] outside 0..20 and 255" in err
    (sbd / "cls" / f"{bad}.mat").write_bytes(b"MATLAB 5.0 garbage")
    code, err = run(capsys, "voc_aug", "--voc", str(voc), "--sbd", str(sbd), "--allow-partial")
    assert code == 2 and f"{bad}.mat: cannot read GTcls.Segmentation" in err
    (sbd / "cls" / f"{bad}.mat").unlink()
    # Missing files are not corrupt ones: without the flag they fail, with it they drop.
    code, err = run(capsys, "voc_aug", "--voc", str(voc), "--sbd", str(sbd), "--allow-partial")
    assert code == 0 and f"SBD {bad}: missing" in err
    assert bad not in read_split_list(voc / "ImageSets/Segmentation/trainaug.txt")


# ---------------------------------------------------------------------------------------
# Pascal Context


def test_rle_decoding_matches_coco_strings():
    # Hand-encoded with maskApi.c's rules: runs 5, 100, 3, 90 → "5T33F" (100 → 'T3'; the
    # fourth count is stored as 90 - 100 = -10 → 'F'): column-major, zeros first.
    runs = rle_decode({"size": [2, 99], "counts": "5T33F"}).T.ravel()
    np.testing.assert_array_equal(runs, np.repeat([0, 1, 0, 1], [5, 100, 3, 90]))
    mask = rle_decode({"size": [2, 3], "counts": [1, 2, 3]})  # uncompressed runs
    np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 0]])
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random()
        np.testing.assert_array_equal(rle_decode(fixtures.rle_encode(m)), m)  # pycocotools
    with pytest.raises(ValueError, match="sum to 5, not 2×3"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


@pytest.mark.parametrize("source", ["json", "mat"])
def test_pascal_context_writes_59_classes_and_background(source, tmp_path, capsys):
    release = fixtures.make_context_release(tmp_path)
    voc = release["voc"]
    option = ["--json", str(release["json"])] if source == "json" else ["--mat-dir", str(release["mat_dir"])]
    code, err = run(capsys, "pascal_context", "--voc", str(voc), *option, "--allow-partial")
    assert code == 0, err
    for i, expected in release["expected"].items():
        got = read_mask(voc / "SegmentationClassContext" / f"{i}.png")
        np.testing.assert_array_equal(got, expected)
        # classes 1 and 3 of the full list are outside the 59: background
        assert (got[np.isin(release["full"][i], [0, 1, 3])] == 0).all()
    for split in ("train", "val"):
        ids = [i for i, phase in release["phases"].items() if phase == split]
        assert read_split_list(voc / f"ImageSets/SegmentationContext/{split}.txt") == sorted(ids)
    assert len(PascalContext(tmp_path, "val", classes=59)) == 2


def test_pascal_context_checks_sizes_schema_and_counts(tmp_path, capsys):
    release = fixtures.make_context_release(tmp_path)
    voc, json_path = release["voc"], release["json"]
    code, err = run(capsys, "pascal_context", "--voc", str(voc), "--json", str(json_path))
    assert code == 2 and "Pascal Context train has 3 ids; the full release gives 4,998" in err
    data = json.loads(json_path.read_text())
    first = release["ids"][0]
    data["images"][0]["height"] += 1
    json_path.write_text(json.dumps(data))
    code, err = run(capsys, "pascal_context", "--voc", str(voc), "--json", str(json_path),
                    "--allow-partial")
    assert code == 2 and f"{first}.jpg: segmentation is" in err and "but the image is" in err
    json_path.write_text(json.dumps({"images": []}))
    code, err = run(capsys, "pascal_context", "--voc", str(voc), "--json", str(json_path))
    assert code == 2 and "not a PASCAL in Detail annotation file" in err


# ---------------------------------------------------------------------------------------
# Person-Part and ADE20K


@pytest.mark.parametrize("id_lists", [True, False], ids=["id_lists", "deeplab_lists"])
def test_person_part_builds_the_dataset_layout(id_lists, tmp_path, capsys):
    release = fixtures.make_person_part_release(tmp_path, id_lists=id_lists)
    out = tmp_path / "person_part"
    code, err = run(capsys, "person_part", "--release", str(release["release"]), "--voc",
                    str(release["voc"]), "--out", str(out), "--allow-partial")
    assert code == 0, err
    for i, label in release["labels"].items():
        np.testing.assert_array_equal(read_mask(out / "SegmentationPart" / f"{i}.png"), label)
        assert (out / "JPEGImages" / f"{i}.jpg").read_bytes() == (
            release["voc"] / "JPEGImages" / f"{i}.jpg"
        ).read_bytes()
    for split, ids in release["splits"].items():
        assert read_split_list(out / f"{split}_id.txt") == ids
        assert len(PersonPart(out, split)) == len(ids)


def test_person_part_names_bad_labels(tmp_path, capsys):
    release = fixtures.make_person_part_release(tmp_path)
    bad = release["splits"]["val"][0]
    label = release["labels"][bad].copy()
    label[0, 0] = 9
    save_label_png(release["release"] / "pascal_person_part_gt" / f"{bad}.png", label)
    code, err = run(capsys, "person_part", "--release", str(release["release"]), "--voc",
                    str(release["voc"]), "--out", str(tmp_path / "out"), "--allow-partial")
    assert code == 2 and f"{bad}.png: label values [9] outside 0..6 and 255" in err


def test_ade20k_unpacks_and_checks_the_zip(tmp_path, capsys):
    fixtures.make_ade20k(tmp_path / "src", counts={"train": 2, "val": 1})
    zip_path = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted((tmp_path / "src").rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "src"))
    out = tmp_path / "ade20k"
    code, err = run(capsys, "ade20k", "--zip", str(zip_path), "--out", str(out))
    assert code == 2 and "ADE20K train has 2 ids; the full release gives 20,210" in err
    shutil.rmtree(out)
    code, err = run(capsys, "ade20k", "--zip", str(zip_path), "--out", str(out), "--allow-partial")
    assert code == 0, err
    assert len(ADE20K(out, "train")) == 2 and len(ADE20K(out, "val")) == 1
