"""Tests for the original CIFAR-10 sources (python pickles and binary records).

The tests write tiny batch files in the original formats themselves: Python 2
style pickles (protocol 2, bytes keys) and 3073-byte binary records.
"""

import os
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest

from wn_jax.data import cifar10, sources

CLASS_NAMES = ["airplane", "automobile", "bird"]
PER_BATCH = 3  # images per batch file


def _batches(seed=0):
  """{file stem: (uint8 [PER_BATCH, 3, 32, 32] CHW, labels)} for all 6 batches."""
  rng = np.random.default_rng(seed)
  stems = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  return {
    stem: (
      rng.integers(0, 256, size=(PER_BATCH, 3, 32, 32), dtype=np.uint8),
      rng.integers(0, len(CLASS_NAMES), size=PER_BATCH),
    )
    for stem in stems
  }


def _write_python(folder, batches):
  os.makedirs(folder)
  for stem, (chw, labels) in batches.items():
    content = {
      b"batch_label": stem.encode(),
      b"labels": [int(label) for label in labels],  # a list, as in the original
      b"data": chw.reshape(len(chw), -1),
      b"filenames": [b"x.png"] * len(chw),
    }
    with open(os.path.join(folder, stem), "wb") as f:
      pickle.dump(content, f, protocol=2)
  with open(os.path.join(folder, "batches.meta"), "wb") as f:
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}
    pickle.dump(meta, f, protocol=2)
  return str(folder)


def _write_binary(folder, batches):
  os.makedirs(folder)
  for stem, (chw, labels) in batches.items():
    records = np.concatenate(
      [labels.astype(np.uint8)[:, None], chw.reshape(len(chw), -1)], axis=1
    )
    with open(os.path.join(folder, stem + ".bin"), "wb") as f:
      f.write(records.tobytes())
  with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
    f.write("\n".join(CLASS_NAMES) + "\n\n")  # The original ends in blank lines.
  return str(folder)


def _expected(batches, split):
  stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
  # CHW -> HWC written out pixel by pixel, independently of the reshape in the code.
  chw = np.concatenate([batches[s][0] for s in stems])
  hwc = np.empty((len(chw), 32, 32, 3), dtype=np.uint8)
  for c in range(3):
    hwc[..., c] = chw[:, c]
  return hwc, np.concatenate([batches[s][1] for s in stems]).astype(np.int32)


WRITERS = {"cifar10_python": _write_python, "cifar10_binary": _write_binary}


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_reads_exact_pixels_labels_and_class_names(tmp_path, source):
  batches = _batches()
  folder = WRITERS[source](tmp_path / "cifar", batches)
  for split in ("train", "test"):
    images, labels, class_names = cifar10.load_cifar10(folder, split, source=source)
    expected_images, expected_labels = _expected(batches, split)
    assert images.dtype == np.uint8 and images.shape == expected_images.shape
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert class_names == CLASS_NAMES
  # One pixel by hand: image 0 of data_batch_1, row 1, column 2, green.
  assert images.shape[0] == PER_BATCH  # (the test split, read last)
  train, _, _ = cifar10.load_cifar10(folder, "train", source=source)
  assert train[0, 1, 2, 1] == batches["data_batch_1"][0][0, 1, 1, 2]


@pytest.mark.parametrize("compression", ["gz", "xz"])
@pytest.mark.parametrize("source", sorted(WRITERS))
def test_reads_the_tar_archive_directly(tmp_path, source, compression):
  batches = _batches(seed=1)
  folder = WRITERS[source](tmp_path / CIFAR10_DIRS[source], batches)
  archive = tmp_path / f"cifar.tar.{compression}"
  with tarfile.open(archive, f"w:{compression}") as tar:
    tar.add(folder, arcname=CIFAR10_DIRS[source])
  from_dir = cifar10.load_cifar10(folder, "train", source=source)
  from_archive = cifar10.load_cifar10(str(archive), "train", source=source)
  np.testing.assert_array_equal(from_archive[0], from_dir[0])
  np.testing.assert_array_equal(from_archive[1], from_dir[1])
  assert from_archive[2] == from_dir[2] == CLASS_NAMES


CIFAR10_DIRS = {"cifar10_python": "cifar-10-batches-py", "cifar10_binary": "cifar-10-batches-bin"}


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_load_dataset_with_config(tmp_path, source):
  batches = _batches()
  folder = WRITERS[source](tmp_path / "cifar", batches)
  config = ml_collections.ConfigDict(
    dict(source=source, name="cifar10", folder=folder, tfds_data_dir="",
         train_split="train", test_split="test")
  )
  dataset = sources.load_dataset(config)
  assert dataset.train_images.shape == (5 * PER_BATCH, 32, 32, 3)
  assert dataset.test_images.shape == (PER_BATCH, 32, 32, 3)
  np.testing.assert_array_equal(dataset.test_images, _expected(batches, "test")[0])
  assert dataset.class_names == CLASS_NAMES


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*cifar-10-python\.tar\.gz"):
    cifar10.load_cifar10(str(tmp_path / "nowhere"), "train")


def test_empty_path_asks_for_the_folder():
  with pytest.raises(ValueError, match=r"needs config\.data\.folder"):
    cifar10.load_cifar10("", "train", source="cifar10_binary")


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_missing_batch_file_is_named(tmp_path, source):
  folder = WRITERS[source](tmp_path / "cifar", _batches())
  missing = "data_batch_3" + (".bin" if source == "cifar10_binary" else "")
  os.remove(os.path.join(folder, missing))
  with pytest.raises(FileNotFoundError, match=rf"{missing}.* is missing"):
    cifar10.load_cifar10(folder, "train", source=source)


def test_binary_wrong_record_size(tmp_path):
  folder = _write_binary(tmp_path / "cifar", _batches())
  path = os.path.join(folder, "test_batch.bin")
  with open(path, "ab") as f:
    f.write(b"\0" * 10)
  with pytest.raises(ValueError, match=r"test_batch\.bin.*not a positive multiple of the record size 3073"):
    cifar10.load_cifar10(folder, "test", source="cifar10_binary")


def test_python_batch_with_wrong_data_shape(tmp_path):
  folder = _write_python(tmp_path / "cifar", _batches())
  with open(os.path.join(folder, "test_batch"), "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
  with pytest.raises(ValueError, match=r"test_batch.*uint8 \[N, 3072\]"):
    cifar10.load_cifar10(folder, "test")


def test_python_batch_that_is_not_a_pickle(tmp_path):
  folder = _write_python(tmp_path / "cifar", _batches())
  with open(os.path.join(folder, "test_batch"), "wb") as f:
    f.write(b"garbage, not a pickle")
  with pytest.raises(ValueError, match=r"test_batch.*not a readable pickle"):
    cifar10.load_cifar10(folder, "test")


def test_labels_outside_the_classes(tmp_path):
  batches = _batches()
  batches["test_batch"][1][0] = 7  # only 3 class names
  folder = _write_binary(tmp_path / "cifar", batches)
  with pytest.raises(ValueError, match=r"outside the 3 classes"):
    cifar10.load_cifar10(folder, "test", source="cifar10_binary")


def test_unknown_split(tmp_path):
  folder = _write_python(tmp_path / "cifar", _batches())
  with pytest.raises(ValueError, match=r"splits 'train'.*'test'.*got 'train\[:10%\]'"):
    cifar10.load_cifar10(folder, "train[:10%]")
