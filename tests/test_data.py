"""Dataset readers, splits, synthetic data and transforms (CPU, a few seconds)."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from data_fixtures import NUS_TEST_NAMES, NUS_TRAIN_NAMES, image_colour, write_nus_wide, write_single_positive
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from sigrl.data import (
    COCO_CLASSES,
    SYNTHETIC_VOCABULARY,
    VOC_CLASSES,
    LabelledSubset,
    MultiLabelDataset,
    NusWide,
    SinglePositive,
    SyntheticShapes,
    build_dataset,
    build_transform,
    draw_single_positives,
    train_val_split,
)
from sigrl.data.nus_wide import image_path
from sigrl.data.synthetic import COLORS, SHAPES
from sigrl.data.transforms import TensorTransform

RAW = T.PILToTensor()  # uint8 [3, H, W]: lets a test see which file an item was read from


def mean_colour(image: torch.Tensor) -> np.ndarray:
    return image.float().mean(dim=(1, 2)).numpy()


def assert_colour(image: torch.Tensor, colour: tuple[int, int, int]) -> None:
    np.testing.assert_allclose(mean_colour(image), colour, atol=8)


# --------------------------------------------------------------------------- synthetic shapes


@pytest.fixture(scope="module")
def synthetic_train() -> SyntheticShapes:
    return SyntheticShapes("train")


def test_synthetic_defaults_and_item_format(synthetic_train):
    dataset = synthetic_train
    assert (len(dataset), len(SyntheticShapes("val", seed=0)), len(SyntheticShapes("test"))) == (2000, 500, 500)
    assert dataset.vocabulary == SYNTHETIC_VOCABULARY and len(dataset.vocabulary) == 12
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (2000, 64, 64, 3)
    assert isinstance(dataset, MultiLabelDataset)
    item = dataset[5]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["index"] == 5
    assert torch.equal(item["labels"], dataset.labels[5])
    # default transform = ToTensor + ImageNet normalisation, nothing else
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (torch.from_numpy(dataset.images[5]).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(item["image"], expected)


def test_synthetic_label_structure(synthetic_train):
    labels = synthetic_train.labels
    assert set(labels.unique().tolist()) == {-1.0, 1.0}
    shapes_per_image = (labels[:, : len(SHAPES)] == 1).sum(1)
    colours_per_image = (labels[:, len(SHAPES) :] == 1).sum(1)
    assert shapes_per_image.min() >= 1 and shapes_per_image.max() <= 4
    assert colours_per_image.min() >= 1 and colours_per_image.max() <= 4
    frequency = (labels == 1).float().mean(0)
    assert frequency.min() > 0.2 and frequency.max() < 0.5  # every label common, none dominant


def test_synthetic_deterministic_by_seed_and_split():
    first, again = SyntheticShapes("train", num_images=40, seed=3), SyntheticShapes("train", num_images=40, seed=3)
    assert np.array_equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    other_seed = SyntheticShapes("train", num_images=40, seed=4)
    assert not np.array_equal(first.images, other_seed.images)
    test = SyntheticShapes("test", num_images=40, seed=3)
    assert not np.array_equal(first.images, test.images) and not torch.equal(first.labels, test.labels)


def test_synthetic_colour_labels_match_pixels(synthetic_train):
    dataset = synthetic_train
    for index in range(300):
        pixels = dataset.images[index].reshape(-1, 3)
        for column, (name, rgb) in enumerate(COLORS.items(), start=len(SHAPES)):
            present = bool((pixels == rgb).all(axis=1).any())
            assert present == (dataset.labels[index, column] == 1), (index, name)
        grey = pixels[(pixels == pixels[:, :1]).all(axis=1)]  # background pixels have R = G = B
        assert len(grey) > 0.4 * len(pixels)


def test_synthetic_shape_labels_match_fill_ratio(synthetic_train):
    """Where an image has one shape label, the filled share of each object's bounding box tells the shape.

    Objects sit one per quadrant, so each non-grey quadrant holds exactly one object.
    """
    dataset = synthetic_train
    single = torch.nonzero((dataset.labels[:, : len(SHAPES)] == 1).sum(1) == 1).flatten()[:300]
    ratios: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    for index in single.tolist():
        shape = SHAPES[int(torch.nonzero(dataset.labels[index, : len(SHAPES)] == 1))]
        pixels = dataset.images[index]
        not_grey = ~((pixels == pixels[..., :1]).all(axis=-1))
        for quadrant in (not_grey[:32, :32], not_grey[:32, 32:], not_grey[32:, :32], not_grey[32:, 32:]):
            if quadrant.any():
                rows, columns = np.nonzero(quadrant)
                box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
                ratios[shape].append(quadrant.sum() / box)
    assert all(ratios.values()), {shape: len(values) for shape, values in ratios.items()}
    assert min(ratios["square"]) > 0.95
    assert 0.7 < min(ratios["circle"]) and max(ratios["circle"]) < 0.9
    for shape in ("triangle", "diamond", "cross", "star"):
        assert max(ratios[shape]) < 0.7, shape


def test_synthetic_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("validation")


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("size", [224, 64])
def test_test_transform_is_resize_then_centre_crop(size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    output = build_transform(size, is_training=False)(image)
    assert output.shape == (3, size, size)
    short = round(size * 256 / 224)  # 256 at 224, 73 at 64
    resized = image.resize((int(short * 400 / 300), short), Image.BICUBIC)
    left, top = round((resized.width - size) / 2), round((resized.height - size) / 2)
    reference = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(
        T.ToTensor()(resized.crop((left, top, left + size, top + size)))
    )
    torch.testing.assert_close(output, reference)
    timm_transform = create_transform(size, is_training=False, crop_pct=224 / 256, interpolation="bicubic")
    torch.testing.assert_close(output, timm_transform(image))


@pytest.mark.parametrize("size", [64, 96, 224])
def test_test_transform_is_torchvisions_resize_crop_and_normalise_bit_for_bit(size):
    """The evaluation transform (torch-free, shared with serving) against torchvision's pipeline on many shapes;
    the resize rounds (110 at 96, where timm would floor to 109)."""
    from sigrl.preprocess import EvalTransform

    shorter = round(size * 256 / 224)
    assert EvalTransform(size).shorter_side == shorter and (size != 96 or shorter == 110)
    reference = T.Compose([T.Resize(shorter, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    transform = build_transform(size, is_training=False)
    rng = np.random.default_rng(size)
    for width, height in [(shorter, shorter), (size, 3 * size), (700, 301), *rng.integers(size // 2, 900, (12, 2))]:
        image = Image.fromarray(rng.integers(0, 256, (int(height), int(width), 3), dtype=np.uint8))
        assert torch.equal(transform(image), reference(image)), (width, height)


@pytest.mark.parametrize("size", [224, 64])
def test_train_transform_shapes_and_randomness(size):
    transform = build_transform(size, is_training=True)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, size, size) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    names = [type(step).__name__ for step in transform.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert transform.transforms[0].scale == (0.08, 1.0)


# --------------------------------------------------------------------------- splits and subsets


def test_train_val_split_is_disjoint_sorted_and_deterministic():
    train, val = train_val_split(103, 0.2, seed=5)
    assert len(val) == 21 and len(train) == 82
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(103))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = train_val_split(103, 0.2, seed=5)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, train_val_split(103, 0.2, seed=6)[1])
    assert len(train_val_split(10, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, 1.0)


def test_labelled_subset_keeps_labels_and_renumbers_index():
    dataset = SyntheticShapes("val", num_images=30)
    subset = LabelledSubset(dataset, [4, 17, 9])
    assert len(subset) == 3 and subset.vocabulary == dataset.vocabulary
    assert torch.equal(subset.labels, dataset.labels[[4, 17, 9]])
    item = subset[1]
    assert item["index"] == 1 and torch.equal(item["labels"], dataset.labels[17])
    assert torch.equal(item["image"], dataset[17]["image"])


# --------------------------------------------------------------------------- NUS-WIDE


@pytest.mark.parametrize(
    "name, relative",
    [
        ("actor_0002_174174086.jpg", "Flickr/actor/0002_174174086.jpg"),
        ("blue_sky_line_0002_2002.jpg", "Flickr/blue_sky_line/0002_2002.jpg"),
    ],
)
def test_nus_wide_folder_mapping(name, relative):
    assert image_path("/data", name) == os.path.join("/data", *relative.split("/"))


def test_nus_wide_mapping_rejects_names_without_folder():
    with pytest.raises(ValueError, match=r"0002_2002\.jpg"):
        image_path("/data", "0002_2002.jpg")


@pytest.mark.parametrize("names_as_bytes", [False, True])
def test_nus_wide_train_reads_seen_labels(tmp_path, names_as_bytes):
    fixture = write_nus_wide(str(tmp_path), names_as_bytes=names_as_bytes)
    dataset = NusWide(str(tmp_path), "train", "seen", transform=RAW)
    assert dataset.vocabulary == fixture.seen and len(dataset) == len(NUS_TRAIN_NAMES)
    assert dataset.image_names == NUS_TRAIN_NAMES
    assert torch.equal(dataset.labels, torch.from_numpy(fixture.train_labels).float())
    item = dataset[2]  # sunset_beach_0003_1003.jpg, in a folder whose name holds '_'
    assert item["index"] == 2
    assert torch.equal(item["labels"], torch.from_numpy(fixture.train_labels[2]).float())
    assert_colour(item["image"], image_colour(2))


def test_nus_wide_test_zsl_and_gzsl(tmp_path):
    fixture = write_nus_wide(str(tmp_path))
    zsl = NusWide(str(tmp_path), "test", "zsl", transform=RAW)
    gzsl = NusWide(str(tmp_path), "test", "gzsl", transform=RAW)
    assert zsl.vocabulary == fixture.unseen and gzsl.vocabulary == fixture.seen + fixture.unseen
    assert torch.equal(zsl.labels, torch.from_numpy(fixture.test_labels_81).float())
    assert torch.equal(gzsl.labels, torch.from_numpy(fixture.test_labels).float())
    assert zsl[3]["labels"].shape == (81,) and gzsl[3]["labels"].shape == (1006,)
    assert_colour(gzsl[1]["image"], image_colour(1))
    assert zsl.image_paths[1] == fixture.image_file(NUS_TEST_NAMES[1])


def test_nus_wide_default_transform_gives_224(tmp_path):
    write_nus_wide(str(tmp_path))
    assert NusWide(str(tmp_path), "test", "zsl")[0]["image"].shape == (3, 224, 224)


@pytest.mark.parametrize("split, vocabulary", [("train", "zsl"), ("test", "seen"), ("val", "seen"), ("train", "all")])
def test_nus_wide_rejects_split_vocabulary_mismatch(tmp_path, split, vocabulary):
    write_nus_wide(str(tmp_path))
    with pytest.raises(ValueError, match=r"split|vocabulary"):
        NusWide(str(tmp_path), split, vocabulary)


def _remove(path: str) -> None:
    os.remove(path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_pickle(path: str, content: object) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def _edit_h5(path: str, key: str, data: np.ndarray | None) -> None:
    with h5py.File(path, "a") as h5:
        del h5[key]
        if data is not None:
            h5.create_dataset(key, data=data)


_TRAIN_H5 = os.path.join("features", "nus_wide_train.h5")
_TEST_H5 = os.path.join("features", "nus_wide_test.h5")
NUS_WIDE_BREAKAGES = {
    "missing Concepts81.txt": ("Concepts81.txt", ("test", "zsl"), FileNotFoundError, "not found", _remove),
    "Concepts925.txt with 924 names": (
        "Concepts925.txt", ("train", "seen"), ValueError, "expected 925 concept names, found 924",
        lambda path: _write_text(path, "\n".join(f"c{i}" for i in range(924))),
    ),
    "missing img_names.pkl": ("img_names.pkl", ("train", "seen"), FileNotFoundError, "not found", _remove),
    "pickle without img_names": (
        "test_img_names.pkl", ("test", "gzsl"), ValueError, "key 'img_names'",
        lambda path: _write_pickle(path, {"names": NUS_TEST_NAMES}),
    ),
    "pickle that is not a pickle": (
        "img_names.pkl", ("train", "seen"), ValueError, "not a readable pickle", lambda path: _write_text(path, "x"),
    ),
    "image name without folder": (
        "img_names.pkl", ("train", "seen"), ValueError, "0001_1001.jpg",
        lambda path: _write_pickle(path, {"img_names": ["0001_1001.jpg"]}),
    ),
    "missing train h5": (_TRAIN_H5, ("train", "seen"), FileNotFoundError, "not found", _remove),
    "h5 without an image's key": (
        _TEST_H5, ("test", "zsl"), ValueError, f"{NUS_TEST_NAMES[2]}-labels_81",
        lambda path: _edit_h5(path, f"{NUS_TEST_NAMES[2]}-labels_81", None),
    ),
    "label vector of the wrong length": (
        _TEST_H5, ("test", "gzsl"), ValueError, r"shape \(925,\), expected \(1006,\)",
        lambda path: _edit_h5(path, f"{NUS_TEST_NAMES[0]}-labels", np.ones(925, np.int8)),
    ),
    "label value 2": (
        _TRAIN_H5, ("train", "seen"), ValueError, r"-1, 0 or 1, found \[2\]",
        lambda path: _edit_h5(path, f"{NUS_TRAIN_NAMES[0]}-labels", np.full(925, 2, np.int8)),
    ),
}


@pytest.mark.parametrize("breakage", NUS_WIDE_BREAKAGES, ids=list(NUS_WIDE_BREAKAGES))
def test_nus_wide_errors_name_the_file(tmp_path, breakage):
    write_nus_wide(str(tmp_path))
    relative, (split, vocabulary), error, message, damage = NUS_WIDE_BREAKAGES[breakage]
    path = os.path.join(str(tmp_path), relative)
    damage(path)
    with pytest.raises(error, match=message) as raised:
        NusWide(str(tmp_path), split, vocabulary)
    assert path in str(raised.value)


def test_nus_wide_missing_image_fails_when_read(tmp_path):
    fixture = write_nus_wide(str(tmp_path))
    missing = fixture.image_file(NUS_TRAIN_NAMES[4])
    os.remove(missing)
    dataset = NusWide(str(tmp_path), "train", "seen")  # constructing does not touch the images
    with pytest.raises(FileNotFoundError) as raised:
        dataset[4]
    assert missing in str(raised.value)


# --------------------------------------------------------------------------- COCO / VOC single positive


def test_spml_observed_positives_drawn_once_saved_and_reloaded(tmp_path):
    root = str(tmp_path)
    fixture = write_single_positive(root, "coco")
    obs_file = os.path.join(root, "formatted_train_labels_obs.npy")
    assert not os.path.exists(obs_file)
    dataset = SinglePositive(root, "coco", "train", transform=RAW)
    observed = np.load(obs_file)
    assert sorted(os.listdir(root)) == [  # saved atomically: no temporary file left behind
        "formatted_train_images.npy", "formatted_train_labels.npy", "formatted_train_labels_obs.npy",
        "formatted_val_images.npy", "formatted_val_labels.npy", "train2014", "val2014",
    ]
    assert observed.shape == fixture.train_labels.shape
    assert np.array_equal(observed.sum(1), np.ones(len(observed)))  # exactly one positive per row
    assert np.all(fixture.train_labels[observed == 1] == 1)  # and it is a true positive
    assert not np.array_equal(observed, fixture.train_labels)  # rows with several positives keep one

    # a saved file is loaded, not redrawn: replace it by another valid choice (the last positive per row)
    last = np.zeros_like(observed)
    last[np.arange(len(last)), [np.nonzero(row)[0][-1] for row in fixture.train_labels]] = 1
    assert not np.array_equal(last, observed)
    np.save(obs_file, last)
    reloaded = SinglePositive(root, "coco", "train")
    train_rows, _ = train_val_split(len(fixture.train_paths), 0.2, 1200)
    assert torch.equal(reloaded.labels, torch.from_numpy(last[train_rows]).float())
    # removing it redraws the identical file (fixed seed)
    os.remove(obs_file)
    SinglePositive(root, "coco", "train")
    assert np.array_equal(np.load(obs_file), observed)
    assert torch.equal(dataset.labels, torch.from_numpy(observed[train_rows]))


def test_spml_train_items_carry_observed_and_true_labels(tmp_path):
    fixture = write_single_positive(str(tmp_path), "voc")
    dataset = SinglePositive(str(tmp_path), "voc", "train", transform=RAW)
    train_rows, _ = train_val_split(len(fixture.train_paths), 0.2, 1200)
    assert len(dataset) == 16 and dataset.vocabulary == VOC_CLASSES
    for index in (0, 7, 15):
        item = dataset[index]
        row = train_rows[index]
        assert item["index"] == index
        assert sorted(item["labels"].unique().tolist()) == [0.0, 1.0] and item["labels"].sum() == 1
        assert torch.equal(item["true_labels"], torch.from_numpy(fixture.train_labels[row] * 2.0 - 1).float())
        assert fixture.train_labels[row, int(item["labels"].argmax())] == 1
        assert_colour(item["image"], image_colour(int(row)))
    assert torch.equal(dataset.true_labels, torch.from_numpy(fixture.train_labels[train_rows] * 2.0 - 1).float())


def test_spml_splits_are_disjoint_deterministic_and_clean(tmp_path):
    root = str(tmp_path)
    fixture = write_single_positive(root, "coco")
    train = SinglePositive(root, "coco", "train")
    val = SinglePositive(root, "coco", "val", transform=RAW)
    test = SinglePositive(root, "coco", "test", transform=RAW)
    assert (len(train), len(val), len(test)) == (16, 4, 6)
    assert not set(train.image_paths) & set(val.image_paths)
    assert sorted(train.image_paths + val.image_paths) == sorted(os.path.join(root, p) for p in fixture.train_paths)
    assert SinglePositive(root, "coco", "val").image_paths == val.image_paths
    assert SinglePositive(root, "coco", "val", seed=7).image_paths != val.image_paths
    official = {"val": (fixture.train_paths, fixture.train_labels), "test": (fixture.val_paths, fixture.val_labels)}
    for dataset, (paths, labels) in ((val, official["val"]), (test, official["test"])):
        rows = [paths.index(os.path.relpath(p, root).replace(os.sep, "/")) for p in dataset.image_paths]
        assert torch.equal(dataset.labels, torch.from_numpy(labels[rows] * 2.0 - 1).float())
        assert "true_labels" not in dataset[0] and dataset.true_labels is None
    assert test.image_paths == [os.path.join(root, p) for p in fixture.val_paths]
    assert_colour(test[3]["image"], image_colour(103))
    assert test[0]["image"].shape[0] == 3 and SinglePositive(root, "coco", "test")[0]["image"].shape == (3, 224, 224)


def test_spml_image_root_and_class_names(tmp_path):
    root = str(tmp_path / "voc")
    images = str(tmp_path / "VOCdevkit")
    os.makedirs(root)
    fixture = write_single_positive(images, "voc")
    for name in os.listdir(images):
        if name.endswith(".npy"):
            os.replace(os.path.join(images, name), os.path.join(root, name))
    dataset = SinglePositive(root, "voc", "test", transform=RAW, image_root=images)
    assert dataset.image_paths[0] == os.path.join(images, fixture.val_paths[0])
    assert_colour(dataset[0]["image"], image_colour(100))
    assert len(set(COCO_CLASSES)) == 80 and COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    assert COCO_CLASSES[60] == "dining table" and COCO_CLASSES[62] == "tv"
    assert len(set(VOC_CLASSES)) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tv monitor"


def test_draw_single_positives_seeded_and_tolerates_empty_rows():
    labels = np.zeros((50, 10), dtype=np.uint8)
    labels[:, :6] = 1
    labels[3] = 0  # an image without any positive stays unobserved
    observed = draw_single_positives(labels, seed=1)
    assert observed[3].sum() == 0 and np.array_equal(np.delete(observed.sum(1), 3), np.ones(49))
    assert np.array_equal(observed, draw_single_positives(labels, seed=1))
    assert not np.array_equal(observed, draw_single_positives(labels, seed=2))
    assert len(np.unique(observed.argmax(1))) == 6  # every positive class gets drawn somewhere


def _save(array: np.ndarray):
    return lambda path: np.save(path, array)


SPML_BREAKAGES = {
    "missing images npy": ("formatted_train_images.npy", "train", FileNotFoundError, "not found", _remove),
    "missing val labels npy": ("formatted_val_labels.npy", "test", FileNotFoundError, "not found", _remove),
    "labels rows differ from images": (
        "formatted_train_labels.npy", "val", ValueError, r"shape \(19, 80\) does not match",
        _save(np.ones((19, 80), np.uint8)),
    ),
    "labels with 79 classes": (
        "formatted_val_labels.npy", "test", ValueError, "80 classes", _save(np.ones((6, 79), np.uint8)),
    ),
    "labels outside 0/1": (
        "formatted_val_labels.npy", "test", ValueError, r"0 or 1, found \[-1\]", _save(-np.ones((6, 80), np.int8)),
    ),
    "images npy not 1-D": (
        "formatted_val_images.npy", "test", ValueError, "1-D", _save(np.array([["a.jpg"] * 2] * 6)),
    ),
    "images file not npy": (
        "formatted_val_images.npy", "test", ValueError, "not a readable .npy",
        lambda path: _write_text(path, "not an array"),
    ),
    "observed file of wrong shape": (
        "formatted_train_labels_obs.npy", "train", ValueError, "does not match", _save(np.zeros((20, 79))),
    ),
    "observed positive that is false": (
        "formatted_train_labels_obs.npy", "train", ValueError, "not a positive", _save(np.ones((20, 80))),
    ),
    "observed file missing a positive": (
        "formatted_train_labels_obs.npy", "train", ValueError, "exactly one", _save(np.zeros((20, 80))),
    ),
}


@pytest.mark.parametrize("breakage", SPML_BREAKAGES, ids=list(SPML_BREAKAGES))
def test_spml_errors_name_the_file(tmp_path, breakage):
    write_single_positive(str(tmp_path), "coco")
    relative, split, error, message, damage = SPML_BREAKAGES[breakage]
    path = os.path.join(str(tmp_path), relative)
    damage(path)
    with pytest.raises(error, match=message) as raised:
        SinglePositive(str(tmp_path), "coco", split)
    assert path in str(raised.value)


def test_spml_missing_or_broken_image_fails_when_read(tmp_path):
    fixture = write_single_positive(str(tmp_path), "coco")
    dataset = SinglePositive(str(tmp_path), "coco", "test")
    missing = os.path.join(str(tmp_path), fixture.val_paths[1])
    os.remove(missing)
    with pytest.raises(FileNotFoundError) as raised:
        dataset[1]
    assert missing in str(raised.value)
    broken = os.path.join(str(tmp_path), fixture.val_paths[2])
    _write_text(broken, "not a jpeg")
    with pytest.raises(ValueError) as raised:
        dataset[2]
    assert broken in str(raised.value)


# --------------------------------------------------------------------------- build_dataset


def test_build_dataset_synthetic_ignores_root():
    dataset = build_dataset("synthetic", "test", root="/nonexistent", image_size=32, num_images=8, seed=2)
    assert dataset[0]["image"].shape == (3, 32, 32) and len(dataset) == 8
    assert np.array_equal(dataset.images, SyntheticShapes("test", 8, 32, seed=2).images)


@pytest.mark.parametrize("name", ["nus-wide", "coco", "voc"])
def test_build_dataset_real_datasets_need_root(tmp_path, name):
    with pytest.raises(ValueError, match="needs root"):
        build_dataset(name, "train")
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        build_dataset(name, "train", root=str(tmp_path / "missing-folder"))


def test_build_dataset_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", "train", root=".")


def test_build_dataset_nus_wide_splits(tmp_path):
    root = str(tmp_path)
    fixture = write_nus_wide(root)
    train = build_dataset("nus-wide", "train", root=root, image_size=64)
    val = build_dataset("nus-wide", "val", root=root, image_size=64)
    assert (len(train), len(val)) == (9, 1) and train.vocabulary == val.vocabulary == fixture.seen
    assert not set(train.indices) & set(val.indices)
    assert torch.equal(val.labels, torch.from_numpy(fixture.train_labels[val.indices]).float())
    assert type(train.dataset.transform.transforms[2]).__name__ == "RandAugment"
    assert isinstance(val.dataset.transform, TensorTransform)  # the evaluation transform serving applies too
    assert train[0]["image"].shape == val[0]["image"].shape == (3, 64, 64)
    assert val[0]["index"] == 0
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=2)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["labels"].shape == (4, 925)
    assert torch.equal(batch["labels"], train.labels[batch["index"]])
    test = build_dataset("nus-wide", "test", root=root, vocabulary="gzsl", image_size=64)
    assert len(test.vocabulary) == 1006 and test[0]["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="zsl"):
        build_dataset("nus-wide", "test", root=root)


def test_build_dataset_spml_transform_per_split(tmp_path):
    root = str(tmp_path)
    write_single_positive(root, "voc")
    train = build_dataset("voc", "train", root=root, image_size=64)
    test = build_dataset("voc", "test", root=root, image_size=64)
    assert type(train.transform.transforms[2]).__name__ == "RandAugment"
    assert isinstance(test.transform, TensorTransform)
    assert train[0]["image"].shape == test[0]["image"].shape == (3, 64, 64)
    assert "true_labels" in train[0]
    custom = build_dataset("voc", "val", root=root, transform=RAW)
    assert custom[0]["image"].dtype == torch.uint8


def test_randaugment_posterize_at_full_magnitude_works():
    """timm's PosterizeIncreasing at magnitude 10 asks PIL for 0 bits; Pillow 13 refuses (pinned below 13)."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = op(Image.new("RGB", (8, 8), (200, 120, 40)))
    assert out.getpixel((0, 0)) == (0, 0, 0)  # keeping 0 most significant bits leaves black


def test_image_root_is_only_for_single_positive_datasets():
    with pytest.raises(ValueError, match="image_root applies to coco and voc only, not to 'synthetic'"):
        build_dataset("synthetic", "test", image_size=64, image_root="/somewhere")
    assert len(build_dataset("synthetic", "test", image_size=64, num_images=3, image_root=None)) == 3
