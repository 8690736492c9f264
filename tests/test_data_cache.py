"""Tests for the data cache behind cache.load_whitened."""

import glob
import os
import shutil
import threading

import ml_collections
import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from wn_jax.data import cache, sources, zca


def _config(folder, cache_dir="", **overrides):
  config = ml_collections.ConfigDict(dict(
    source="folder", name="cifar10", folder=str(folder), tfds_data_dir="",
    train_split="train", test_split="test", zca_regularization=1e-2, cache_dir=cache_dir))
  config.update(overrides)
  return config


@pytest.fixture
def folder(tmp_path):
  return make_image_folder(tmp_path / "images", num_train_per_class=6, num_test_per_class=2)


def _direct(config):
  """What load_whitened must return: load_dataset + whiten_dataset, no cache."""
  dataset = sources.load_dataset(config)
  train_x, test_x = zca.whiten_dataset(dataset, config.zca_regularization)
  return train_x, dataset.train_labels, test_x, dataset.test_labels, dataset.class_names


def _assert_same(data, expected):
  for got, want in zip(data[:4], expected[:4]):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  assert list(data.class_names) == list(expected[4])


def _entries(cache_dir, kind):
  return sorted(glob.glob(os.path.join(cache_dir, f"{kind}-*.bin")))


def test_second_load_hits_and_returns_the_same_arrays(folder, data_cache_dir):
  config = _config(folder)
  first = cache.load_whitened(config)
  second = cache.load_whitened(config)

  assert first.report.cache == "miss" and second.report.cache == "hit"
  assert second.report.cache_dir == data_cache_dir  # from WN_JAX_CACHE_DIR (conftest)
  assert len(_entries(data_cache_dir, "images")) == len(_entries(data_cache_dir, "whitened")) == 1
  expected = _direct(config)
  _assert_same(first, expected)
  _assert_same(second, expected)
  assert second.class_names == ["ant", "bee", "cat"]


def test_changed_regularization_reuses_images_but_refits(folder):
  cache.load_whitened(_config(folder))
  changed = _config(folder, zca_regularization=1e-3)
  data = cache.load_whitened(changed)
  assert data.report.cache == "images"
  _assert_same(data, _direct(changed))
  assert cache.load_whitened(changed).report.cache == "hit"


def test_changed_split_is_not_served_from_the_cache(folder):
  cache.load_whitened(_config(folder))
  swapped = _config(folder, test_split="train")
  data = cache.load_whitened(swapped)
  assert data.report.cache == "miss"
  _assert_same(data, _direct(swapped))


def _write_png(path, value):
  Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


@pytest.mark.parametrize("change", ["add", "remove", "modify"])
def test_changed_folder_is_not_served_from_the_cache(folder, change):
  config = _config(folder)
  target = os.path.join(folder, "train", "bee", "0001.png")
  _write_png(target, 7)
  before = cache.load_whitened(config)
  if change == "add":
    _write_png(os.path.join(folder, "train", "bee", "0099.png"), 7)
  elif change == "remove":
    os.remove(target)
  else:
    # Another image of the same file size, with the old mtime put back:
    # only the content (and the ctime) tell the change.
    stat = os.stat(target)
    _write_png(target, 8)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(target).st_size == stat.st_size
    assert os.stat(target).st_mtime_ns == stat.st_mtime_ns
  after = cache.load_whitened(config)
  assert after.report.cache == "miss"
  _assert_same(after, _direct(config))
  assert len(after.train_y) == len(before.train_y) + {"add": 1, "remove": -1}.get(change, 0)


def _corrupt(path, how):
  content = open(path, "rb").read()
  if how == "truncated":
    content = content[: len(content) // 2]
  elif how == "garbage":
    content = os.urandom(len(content))
  else:  # One flipped byte in the middle of the whitened training array.
    content = bytearray(content)
    content[len(content) // 3] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(content))


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped_byte"])
def test_corrupt_entry_is_rebuilt_not_trusted(folder, data_cache_dir, how):
  config = _config(folder)
  cache.load_whitened(config)
  (whitened,) = _entries(data_cache_dir, "whitened")
  _corrupt(whitened, how)

  data = cache.load_whitened(config)
  assert data.report.cache == "images"  # The images entry is intact.
  _assert_same(data, _direct(config))
  assert cache.load_whitened(config).report.cache == "hit"  # Rewritten.

  (images,) = _entries(data_cache_dir, "images")
  _corrupt(images, how)
  os.remove(whitened)
  data = cache.load_whitened(config)
  assert data.report.cache == "miss"
  _assert_same(data, _direct(config))


def test_entry_under_another_key_is_not_trusted(folder, data_cache_dir):
  cache.load_whitened(_config(folder, zca_regularization=1e-2))
  (first,) = _entries(data_cache_dir, "whitened")
  other = _config(folder, zca_regularization=1e-3)
  cache.load_whitened(other)
  (second,) = [p for p in _entries(data_cache_dir, "whitened") if p != first]
  shutil.copyfile(first, second)  # A 1e-2 entry under the 1e-3 name.
  data = cache.load_whitened(other)
  assert data.report.cache == "images"
  _assert_same(data, _direct(other))


def test_cache_off(folder, data_cache_dir, monkeypatch):
  data = cache.load_whitened(_config(folder, cache_dir="none"))
  assert data.report.cache == "off" and data.report.cache_dir is None
  monkeypatch.setenv("WN_JAX_CACHE_DIR", "None")
  assert cache.load_whitened(_config(folder)).report.cache == "off"
  assert os.listdir(data_cache_dir) == []


def test_cache_dir_resolution(tmp_path, monkeypatch):
  monkeypatch.setenv("WN_JAX_CACHE_DIR", str(tmp_path / "env"))
  assert cache.resolve_cache_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
  assert cache.resolve_cache_dir("") == str(tmp_path / "env")
  monkeypatch.delenv("WN_JAX_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cache.resolve_cache_dir("") == str(tmp_path / "xdg" / "wn_jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache.resolve_cache_dir("") == str(tmp_path / "home" / ".cache" / "wn_jax")


def test_explicit_cache_dir_is_used(folder, tmp_path):
  cache_dir = str(tmp_path / "my_cache")
  cache.load_whitened(_config(folder, cache_dir=cache_dir))
  data = cache.load_whitened(_config(folder, cache_dir=cache_dir))
  assert data.report.cache == "hit" and data.report.cache_dir == cache_dir


def test_unwritable_cache_dir_warns_and_goes_on(folder, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  config = _config(folder, cache_dir=str(blocker / "cache"))
  data = cache.load_whitened(config)
  _assert_same(data, _direct(config))


def test_concurrent_loads_leave_one_sound_entry(folder, data_cache_dir):
  config = _config(folder)
  results, errors = [], []

  def load():
    try:
      results.append(cache.load_whitened(config))
    except Exception as e:  # noqa: BLE001 (reported below)
      errors.append(e)

  threads = [threading.Thread(target=load) for _ in range(3)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors
  expected = _direct(config)
  for data in results:
    _assert_same(data, expected)
  assert not glob.glob(os.path.join(data_cache_dir, "*.tmp"))
  data = cache.load_whitened(config)
  assert data.report.cache == "hit"
  _assert_same(data, expected)


def test_old_entries_are_evicted(folder, data_cache_dir):
  for i in range(cache.CACHE_ENTRIES_KEPT + 2):
    cache.load_whitened(_config(folder, zca_regularization=10.0 ** -(i + 1)))
  assert len(_entries(data_cache_dir, "whitened")) == cache.CACHE_ENTRIES_KEPT
  assert len(_entries(data_cache_dir, "images")) == 1
  # The newest one is kept.
  last = _config(folder, zca_regularization=10.0 ** -(cache.CACHE_ENTRIES_KEPT + 2))
  assert cache.load_whitened(last).report.cache == "hit"


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_fingerprint_follows_the_files(tmp_path, as_archive):
  # The fingerprint alone (a whole load_whitened would fit a 3072-dim ZCA).
  import tarfile

  from test_cifar10_files import _batches, _write_binary
  folder = _write_binary(tmp_path / "cifar-10-batches-bin", _batches())
  path = folder
  if as_archive:
    path = str(tmp_path / "cifar-10-binary.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
      tar.add(folder, arcname="cifar-10-batches-bin")
  config = _config(path, source="cifar10_binary")
  before = cache.dataset_fingerprint(config)
  assert cache.dataset_fingerprint(config) == before
  changed = path if as_archive else os.path.join(folder, "test_batch.bin")
  stat = os.stat(changed)
  with open(changed, "r+b") as f:
    f.write(b"\x01")  # New content, same size; the old mtime is put back.
  os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert cache.dataset_fingerprint(config) != before
  other_source = _config(path, source="cifar10_python")
  assert cache.dataset_fingerprint(other_source) != cache.dataset_fingerprint(config)


def test_tfds_fingerprint_follows_name_split_and_prepared_files(tmp_path):
  config = _config("", source="tfds", tfds_data_dir=str(tmp_path))
  assert cache.dataset_fingerprint(config) is None  # not prepared yet
  prepared = tmp_path / "cifar10" / "3.0.2"
  prepared.mkdir(parents=True)
  (prepared / "cifar10-train.tfrecord-00000-of-00001").write_bytes(b"records")
  before = cache.dataset_fingerprint(config)
  assert before is not None and before == cache.dataset_fingerprint(config)
  assert cache.dataset_fingerprint(_config(
    "", source="tfds", tfds_data_dir=str(tmp_path), train_split="train[:50%]")) != before
  assert cache.dataset_fingerprint(_config(
    "", source="tfds", tfds_data_dir=str(tmp_path), name="cifar10:3.0.2")) != before
  (prepared / "cifar10-train.tfrecord-00000-of-00001").write_bytes(b"other!!")
  assert cache.dataset_fingerprint(config) != before


def test_read_only_cache_still_serves(folder, data_cache_dir, monkeypatch):
  config = _config(folder)
  cache.load_whitened(config)

  def refuse(*args, **kwargs):
    raise PermissionError("read-only file system")

  monkeypatch.setattr(os, "utime", refuse)
  data = cache.load_whitened(config)
  assert data.report.cache == "hit"
  _assert_same(data, _direct(config))
