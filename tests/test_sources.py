"""Image sources: order, ids, labels, splits, fingerprints and clear errors."""

import gzip

import numpy as np
import pytest
from PIL import Image

from featcache.errors import SourceError
from featcache.sources import ArraySource, CsvSource, FolderSource, SubsetWarning, load_dataset, open_source


def test_folder_with_splits_is_deterministic_and_labelled(photo_folder):
    src = FolderSource(photo_folder)
    assert src.class_names == ["china", "flower"]
    assert len(src) == 24
    assert {it.split for it in src.items} == {"train", "test"}
    # ids are relative posix paths, in sorted order; labels follow class folders
    ids = [it.id for it in src.items]
    assert ids == sorted(ids)
    assert all(it.label == (0 if "/china/" in it.id else 1) for it in src.items)
    assert FolderSource(photo_folder).fingerprint() == src.fingerprint()


def test_folder_fingerprint_changes_when_an_image_changes(photo_folder, copy_folder):
    root = copy_folder(photo_folder)
    before = FolderSource(root).fingerprint()
    victim = next(root.rglob("*.png"))
    Image.new("RGB", (50, 50), "red").save(victim)
    assert FolderSource(root).fingerprint() != before


def test_folder_reads_batches_at_the_requested_size(photo_folder):
    src = FolderSource(photo_folder)
    batch = src.read(src.items[:5], (40, 48))
    assert batch.images.shape == (5, 40, 48, 3) and batch.images.dtype == np.uint8
    assert not batch.skipped


def test_csv_manifest_relative_paths_named_labels_and_splits(photo_folder, tmp_path):
    files = sorted(photo_folder.rglob("*.jpg"))
    rows = ["path,label,split"]
    for f in files:
        rows.append(f"{f.relative_to(photo_folder).as_posix()},{f.parent.name},{f.parent.parent.name}")
    manifest = photo_folder / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    try:
        src = CsvSource(manifest)
        assert src.class_names == ["china", "flower"]
        assert len(src) == len(files)
        assert src.items[0].split in ("train", "test")
        assert src.read(src.items[:2], (32, 32)).images.shape == (2, 32, 32, 3)
    finally:
        manifest.unlink()


@pytest.mark.parametrize("body, message", [
    ("file,label\na.jpg,1\n", "missing column"),
    ("path,label\na.jpg,cat\nb.jpg,dog\n", None),
    ("path,label\na.jpg,1\na.jpg,2\n", "duplicate path"),
    ("path,label\n../escape.jpg,1\n", "outside"),
    ("path,label,split\na.jpg,1,holdout\n", "unknown split"),
])
def test_csv_manifest_errors_name_the_problem(tmp_path, body, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(body)
    if message is None:
        assert CsvSource(manifest).class_names == ["cat", "dog"]
        return
    with pytest.raises(SourceError, match=message):
        CsvSource(manifest)


def test_csv_unknown_label_against_given_classes_and_non_utf8(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.jpg,cat\nb.jpg,zebra\n")
    with pytest.raises(SourceError, match="unknown label 'zebra'"):
        CsvSource(manifest, class_names=["cat", "dog"])
    manifest.write_bytes("path,label\ncaf\xe9.jpg,1\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        CsvSource(manifest)


def test_csv_outside_paths_allowed_only_on_request(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "out.png")
    (sub / "m.csv").write_text("path,label\n../out.png,0\n")
    assert len(CsvSource(sub / "m.csv", allow_outside=True)) == 1


def test_array_source_grey_becomes_rgb_and_hash_tracks_content():
    imgs = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    src = ArraySource(imgs, [0, 1, 0, 1])
    batch = src.read(src.items, None)
    assert batch.images.shape == (4, 5, 5, 3)
    assert np.array_equal(batch.images[..., 0], batch.images[..., 2])
    other = imgs.copy()
    other[0, 0, 0] += 1
    assert ArraySource(other, [0, 1, 0, 1]).fingerprint() != src.fingerprint()
    with pytest.raises(SourceError, match="uint8"):
        ArraySource(imgs.astype(np.float32), [0, 1, 0, 1])
    with pytest.raises(SourceError, match="4 images but 3 labels"):
        ArraySource(imgs, [0, 1, 0])


def test_subset_filters_classes_and_keeps_the_first():
    imgs = np.zeros((10, 4, 4), np.uint8)
    src = ArraySource(imgs, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    sub = src.subset(classes=[3, 4], first=3)
    assert [it.label for it in sub.items] == [3, 4, 3]
    assert [it.index for it in sub.items] == [0, 1, 2]
    assert sub.fingerprint() != src.fingerprint()
    with pytest.raises(SourceError, match="unknown label"):
        src.subset(classes=[7])
    with pytest.raises(SourceError, match="not both"):
        src.subset(limit=3, first=3)
    with pytest.raises(SourceError, match="positive integer"):
        src.subset(limit=0)


def test_limit_is_a_seeded_stratified_sample_in_source_order():
    # a class-folder-like order: every image of class 0, then class 1, ...
    labels = np.repeat(np.arange(10), 30)
    src = ArraySource(np.zeros((300, 4, 4), np.uint8), labels)
    sub = src.subset(limit=60)
    counts = np.bincount([it.label for it in sub.items], minlength=10)
    assert counts.tolist() == [6] * 10  # every class, in proportion
    parent_ids = [it.id for it in src.items]
    positions = [parent_ids.index(it.id) for it in sub.items]
    assert positions == sorted(positions)  # source order kept
    assert [it.id for it in src.subset(limit=60).items] == [it.id for it in sub.items]  # seeded
    other = src.subset(limit=60, limit_seed=1)
    assert [it.id for it in other.items] != [it.id for it in sub.items]
    assert other.fingerprint() != sub.fingerprint()
    # the old behaviour, on request: the first 60 are two classes, and it says so
    with pytest.warns(SubsetWarning, match="first=60 keeps 60 images and no image of 8 class"):
        first = src.subset(first=60)
    assert sorted({it.label for it in first.items}) == [0, 1]
    with pytest.warns(SubsetWarning, match="limit=4 .* 6 class"):
        src.subset(limit=4)


def test_limit_also_keeps_the_split_proportions():
    labels = np.tile([0, 1], 100)
    splits = ["train"] * 150 + ["test"] * 50
    sub = ArraySource(np.zeros((200, 4, 4), np.uint8), labels, splits=splits).subset(limit=40)
    pairs = [(it.split, it.label) for it in sub.items]
    assert sorted(set(pairs)) == [("test", 0), ("test", 1), ("train", 0), ("train", 1)]
    assert [it.split for it in sub.items].count("test") == 10


def test_array_labels_may_be_class_names_with_splits():
    imgs = np.zeros((4, 4, 4), np.uint8)
    src = ArraySource(imgs, ["dog", "cat", "dog", ""], splits=["train", "validation", "test", None])
    assert src.class_names == ["cat", "dog"] and src.labels.tolist() == [1, 0, 1, -1]
    assert [it.split for it in src.items] == ["train", "val", "test", None]
    src = ArraySource(imgs, ["dog", "cat", "dog", "cat"], class_names=["dog", "cat", "bird"])
    assert src.labels.tolist() == [0, 1, 0, 1] and src.class_names == ["dog", "cat", "bird"]
    with pytest.raises(SourceError, match="'cow' not in class_names"):
        ArraySource(imgs, ["dog", "cow", "dog", "cat"], class_names=["dog", "cat"])
    with pytest.raises(SourceError, match="unknown split 'holdout'"):
        ArraySource(imgs, [0, 1, 0, 1], splits=["train", "holdout", "test", "val"])
    with pytest.raises(SourceError, match="all class indices or all class names"):
        ArraySource(imgs, ["dog", 1, "dog", 1])


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_prefers_the_users_directory(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (7, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)
    src = load_dataset("fashion_mnist:test", data_dir=tmp_path)
    assert len(src) == 7 and src.items[3].label == 3
    assert src.items[3].id == "fashion_mnist/test/3"
    assert np.array_equal(src.images[..., 0], imgs)
    assert src.class_names[9] == "Ankle boot"


def test_a_truncated_or_corrupt_gzipped_idx_file_is_a_clear_source_error(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 255, (7, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a download cut short
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz is not a readable gzip file"):
        load_dataset("fashion_mnist:test", data_dir=tmp_path)
    path.write_bytes(whole[:-8] + bytes(8))  # the right length, a wrong checksum
    with pytest.raises(SourceError, match="not a readable gzip file"):
        load_dataset("fashion_mnist:test", data_dir=tmp_path)
    path.write_bytes(whole + whole)  # two gzip members, as `cat a.gz b.gz` makes: read as gzip -dc would
    with pytest.raises(SourceError, match="not an IDX file|truncated"):
        load_dataset("fashion_mnist:test", data_dir=tmp_path)


def test_array_split_names_are_each_checked_and_mapped():
    imgs = np.zeros((6, 4, 4), np.uint8)
    splits = np.array(["train", "Validation", "", "TEST", "valid", "train"])
    src = ArraySource(imgs, [0, 1, 0, 1, 0, 1], splits=splits)
    assert [it.split for it in src.items] == ["train", "val", None, "test", "val", "train"]
    for bad in (["train", ["test"], "test", "val", "val", "train"], ["train", 1, "test", "val", "val", "train"]):
        with pytest.raises(SourceError, match="unknown split"):
            ArraySource(imgs, [0, 1, 0, 1, 0, 1], splits=bad)


def test_fashion_mnist_loads_offline_from_debian(fashion_mnist_available):
    src = open_source("fashion_mnist:test")
    assert len(src) == 10_000 and src.native_size == (28, 28)
    assert src.items[0].split == "test" and src.items[0].label == 9  # the first test image is an ankle boot


def test_unknown_source_and_dataset_errors(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="unknown split"):
        open_source("fashion_mnist:holdout")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(empty)
