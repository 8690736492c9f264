"""Tests for wn_jax.data (folder, sources, zca, batches) on tiny generated data
(no /work/data)."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from absl import logging
from PIL import Image

from wn_jax.data import batches, cache, sources
from wn_jax.data.folder import load_folder, warn_if_lossy_and_whitened
from wn_jax.data.zca import apply_zca, fit_zca, scale_pixels, whiten_dataset

CLASSES = ("cat", "airplane", "dog")  # Deliberately unsorted.
IMAGES_PER_CLASS = 4
SIZE = 8


def _write_image(path, rng, size=(SIZE, SIZE), mode="RGB"):
  channels = {"RGB": 3, "L": 1}[mode]
  pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)
  return pixels


def _make_folder(root, splits=("train", "test"), classes=CLASSES):
  """Writes root/<split>/<class>/<i>.png (lossless) and returns the pixels.

  Returns:
    {split: {class: [uint8 [SIZE, SIZE, 3]] in file-name order}}.
  """
  rng = np.random.default_rng(0)
  written = {}
  for split in splits:
    written[split] = {}
    for class_name in classes:
      class_dir = os.path.join(root, split, class_name)
      os.makedirs(class_dir)
      written[split][class_name] = [
        _write_image(os.path.join(class_dir, f"{i:02d}.png"), rng) for i in range(IMAGES_PER_CLASS)
      ]
  return written


def _folder_config(folder, **overrides):
  config = ml_collections.ConfigDict(
    dict(
      source="folder",
      name="cifar10",
      folder=str(folder),
      tfds_data_dir=None,
      train_split="train",
      test_split="test",
    )
  )
  config.update(overrides)
  return config


# ---------------------------------------------------------------------------
# load_folder / load_dataset.


def test_load_folder_shapes_dtypes_labels_and_pixels(tmp_path):
  written = _make_folder(tmp_path)
  images, labels, class_names = load_folder(str(tmp_path), "train")

  assert class_names == sorted(CLASSES)
  assert images.shape == (len(CLASSES) * IMAGES_PER_CLASS, SIZE, SIZE, 3)
  assert images.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, np.repeat(np.arange(3), IMAGES_PER_CLASS))
  # Sorted classes, then sorted files: the exact pixels written (PNG is lossless).
  expected = np.stack([p for c in sorted(CLASSES) for p in written["train"][c]])
  np.testing.assert_array_equal(images, expected)


def test_load_folder_reads_jpeg_and_grayscale_as_rgb(tmp_path):
  rng = np.random.default_rng(1)
  class_dir = tmp_path / "train" / "a"
  class_dir.mkdir(parents=True)
  gray = _write_image(str(class_dir / "0.png"), rng, mode="L")
  _write_image(str(class_dir / "1.jpg"), rng)
  (class_dir / ".DS_Store").write_bytes(b"not an image, but hidden")

  images, labels, class_names = load_folder(str(tmp_path), "train")

  assert images.shape == (2, SIZE, SIZE, 3)
  np.testing.assert_array_equal(images[0], np.repeat(gray, 3, axis=-1))
  assert class_names == ["a"]


def test_load_dataset_folder_source(tmp_path):
  _make_folder(tmp_path)
  dataset = sources.load_dataset(_folder_config(tmp_path))

  assert dataset.class_names == sorted(CLASSES)
  assert dataset.train_images.shape == (12, SIZE, SIZE, 3)
  assert dataset.test_images.shape == (12, SIZE, SIZE, 3)
  assert dataset.train_labels.dtype == dataset.test_labels.dtype == np.int32


def test_missing_root_says_how_to_get_data(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*tar -xzf.*data\.folder"):
    load_folder(str(tmp_path / "nowhere"), "train")


def test_missing_split_folder(tmp_path):
  _make_folder(tmp_path, splits=("train",))
  with pytest.raises(FileNotFoundError, match=r"Split folder .*test.* does not exist"):
    load_folder(str(tmp_path), "test")


def test_split_without_class_folders(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "stray.png").write_bytes(b"")
  with pytest.raises(ValueError, match="has no class folders"):
    load_folder(str(tmp_path), "train")


def test_empty_class_folder_is_named(tmp_path):
  _make_folder(tmp_path, splits=("train",))
  (tmp_path / "train" / "empty_class").mkdir()
  with pytest.raises(ValueError, match=r"empty_class.*has no image files"):
    load_folder(str(tmp_path), "train")


def test_non_image_file_is_named(tmp_path):
  _make_folder(tmp_path, splits=("train",))
  (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=r"notes\.txt.*as an image"):
    load_folder(str(tmp_path), "train")


def test_truncated_image_is_named(tmp_path):
  _make_folder(tmp_path, splits=("train",))
  path = tmp_path / "train" / "cat" / "00.png"
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match=r"00\.png.*as an image"):
    load_folder(str(tmp_path), "train")


def test_mixed_sizes_name_one_file_of_each_size(tmp_path):
  _make_folder(tmp_path, splits=("train",))
  rng = np.random.default_rng(2)
  _write_image(str(tmp_path / "train" / "dog" / "99.png"), rng, size=(5, 7))
  with pytest.raises(ValueError, match="different sizes") as error:
    load_folder(str(tmp_path), "train")
  message = str(error.value)
  assert "(8, 8)" in message and os.path.join("airplane", "00.png") in message
  assert "(7, 5)" in message and os.path.join("dog", "99.png") in message


def test_train_and_test_class_lists_must_match(tmp_path):
  _make_folder(tmp_path / "a", splits=("train",), classes=CLASSES)
  _make_folder(tmp_path / "a", splits=("test",), classes=CLASSES[:2])
  with pytest.raises(ValueError, match="labels would not match"):
    sources.load_dataset(_folder_config(tmp_path / "a"))


def test_unknown_source_lists_valid_ones(tmp_path):
  with pytest.raises(ValueError, match=r"'hdf5'.*'tfds', 'folder'"):
    sources.load_dataset(_folder_config(tmp_path, source="hdf5"))


# ---------------------------------------------------------------------------
# tfds source.


@pytest.mark.slow  # 7 s on the 2-core CPU
def test_tfds_source_matches_folder_format(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  _make_folder(tmp_path)
  folder = sources.load_dataset(_folder_config(tmp_path))
  with tfds.testing.mock_data(num_examples=6):
    from_tfds = sources.load_dataset(_folder_config(tmp_path, source="tfds"))

  for name in ("train_images", "train_labels", "test_images", "test_labels"):
    tfds_array, folder_array = getattr(from_tfds, name), getattr(folder, name)
    assert tfds_array.dtype == folder_array.dtype, name
    assert tfds_array.ndim == folder_array.ndim, name
  assert from_tfds.train_images.shape == (6, 32, 32, 3)
  assert from_tfds.train_labels.shape == (6,)
  assert len(from_tfds.class_names) == 10
  assert from_tfds.train_labels.min() >= 0 and from_tfds.train_labels.max() < 10


def test_unknown_tfds_name():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match=r"'no_such_dataset' is not a tfds data set name"):
    sources.load_tfds("no_such_dataset", "train", None)


def test_tfds_failure_points_to_folder_source(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline_load(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "load", offline_load)
  with pytest.raises(RuntimeError, match=r"(?s)no network.*--config\.data\.source=folder"):
    sources.load_tfds("cifar10", "train", None)


# ---------------------------------------------------------------------------
# Scaling and ZCA.


def test_scale_pixels_is_the_authors_formula():
  pixels = np.array([0, 127, 128, 255], dtype=np.uint8)
  scaled = scale_pixels(pixels)
  assert scaled.dtype == np.float32
  np.testing.assert_array_equal(scaled, [-127.5 / 128, -0.5 / 128, 0.5 / 128, 127.5 / 128])


def _correlated_data(num_examples=2000, dim=12, seed=0):
  """[num_examples, dim] float32 with covariance eigenvalues in about [0.25, 9]."""
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  mixing = np.diag(np.linspace(0.5, 3.0, dim)) @ rotation  # Correlates all features.
  return (rng.normal(size=(num_examples, dim)) @ mixing + 3.0).astype(np.float32)


def test_zca_matches_direct_recipe_computation():
  x = _correlated_data()
  regularization = 1e-2  # Large enough that a wrong placement would show.
  # The authors' nn.ZCA.fit, written out: biased covariance, SVD.
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=0)
  sigma = (x64 - mean).T @ (x64 - mean) / x.shape[0]
  u, s, _ = np.linalg.svd(sigma)
  whitening = u @ np.diag(1.0 / np.sqrt(s + regularization)) @ u.T
  expected = (x64 - mean) @ whitening

  # Small chunks exercise the chunked covariance and application.
  zca = fit_zca(x, regularization, chunk_size=300)
  whitened = apply_zca(zca, x, chunk_size=700)

  np.testing.assert_allclose(zca.mean, mean, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(zca.whitening, whitening, rtol=1e-9, atol=1e-12)
  assert whitened.dtype == np.float32
  np.testing.assert_allclose(whitened, expected, rtol=1e-5, atol=1e-5)


def test_zca_whitened_covariance_is_near_identity():
  x = _correlated_data()
  regularization = 1e-5
  whitened = apply_zca(fit_zca(x, regularization), x)

  covariance = np.cov(whitened.astype(np.float64), rowvar=False, bias=True)
  # Exactly, the whitened covariance is U diag(S / (S + reg)) U^T, so it
  # differs from I by at most reg / (S_min + reg); float32 output adds ~1e-6.
  centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
  smallest_eigenvalue = np.linalg.eigvalsh(centred.T @ centred / len(x)).min()
  tolerance = regularization / (smallest_eigenvalue + regularization) + 1e-5
  assert tolerance < 1e-3, "test data should be well conditioned"
  np.testing.assert_allclose(covariance, np.eye(x.shape[1]), atol=tolerance)
  np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-5)


def test_whiten_dataset_fits_on_train_and_applies_to_both(tmp_path):
  _make_folder(tmp_path)
  dataset = sources.load_dataset(_folder_config(tmp_path))
  train_x, test_x = whiten_dataset(dataset, regularization=1e-5)

  assert train_x.shape == dataset.train_images.shape and train_x.dtype == np.float32
  assert test_x.shape == dataset.test_images.shape and test_x.dtype == np.float32
  # The recipe written out in float64: (x - 127.5)/128, ZCA fitted on the
  # training images only (biased covariance, SVD), applied to both splits.
  train_flat = (dataset.train_images.reshape(12, -1).astype(np.float64) - 127.5) / 128
  test_flat = (dataset.test_images.reshape(12, -1).astype(np.float64) - 127.5) / 128
  mean = train_flat.mean(axis=0)
  u, s, _ = np.linalg.svd((train_flat - mean).T @ (train_flat - mean) / 12)
  whitening = u @ np.diag(1.0 / np.sqrt(s + 1e-5)) @ u.T
  for actual, flat in ((train_x, train_flat), (test_x, test_flat)):
    expected = (flat - mean) @ whitening
    np.testing.assert_allclose(actual.reshape(12, -1), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
  np.testing.assert_allclose(train_x.mean(axis=0), 0.0, atol=1e-4)


# ---------------------------------------------------------------------------
# Augmentation and batching.


def _ramp_images(batch=32, size=6):
  """[batch, size, size, 2] with every value distinct, so moves are visible."""
  return np.arange(batch * size * size * 2, dtype=np.float32).reshape(batch, size, size, 2) + 1


def test_augment_identity_when_off():
  images = _ramp_images()
  out = batches.augment(jax.random.key(0), images, flip=False, max_translation=0)
  np.testing.assert_array_equal(out, images)


def test_augment_shape_dtype_and_determinism():
  images = _ramp_images().astype(np.uint8)
  key = jax.random.key(0)
  out = batches.augment(key, images, flip=True, max_translation=2)
  again = batches.augment(key, images, flip=True, max_translation=2)
  other = batches.augment(jax.random.key(1), images, flip=True, max_translation=2)

  assert out.shape == images.shape and out.dtype == images.dtype
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)


def test_flip_mirrors_some_images_and_keeps_others():
  images = _ramp_images()
  out = np.asarray(batches.augment(jax.random.key(3), images, flip=True, max_translation=0))
  mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
  assert np.all(mirrored | kept)
  assert 0 < mirrored.sum() < len(images)  # Any key fails this with P = 2 * 2**-32.


def test_translation_is_a_zero_padded_shift_within_bounds():
  max_translation = 2
  images = _ramp_images()
  size = images.shape[1]
  out = np.asarray(
    batches.augment(jax.random.key(4), images, flip=False, max_translation=max_translation)
  )
  shifts = set()
  for image, moved in zip(images, out):
    # Find the shift (dy, dx) with moved[i, j] == image[i + dy, j + dx].
    matches = []
    for dy in range(-max_translation, max_translation + 1):
      for dx in range(-max_translation, max_translation + 1):
        pad = max_translation
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        window = padded[pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        if np.array_equal(moved, window):
          matches.append((dy, dx))
    assert len(matches) == 1
    shifts.add(matches[0])
  # Independent per image and per axis: 32 draws from 25 shifts give ~18
  # distinct ones, and dy == dx throughout would mean one draw for both axes.
  assert len(shifts) >= 10
  assert any(dy != dx for dy, dx in shifts)


def test_augment_runs_inside_jit():
  images = _ramp_images()

  @jax.jit
  def step(key, x):
    return batches.augment(key, x, flip=True, max_translation=1).sum(axis=(1, 2, 3))

  key = jax.random.key(5)
  np.testing.assert_allclose(
    step(key, images),
    batches.augment(key, images, flip=True, max_translation=1).sum(axis=(1, 2, 3)),
  )


def test_epoch_permutation_reproducible_and_new_each_epoch():
  first = batches.epoch_permutation(seed=0, epoch=0, num_examples=100)
  np.testing.assert_array_equal(np.sort(first), np.arange(100))
  np.testing.assert_array_equal(first, batches.epoch_permutation(0, 0, 100))
  assert not np.array_equal(first, batches.epoch_permutation(0, 1, 100))
  assert not np.array_equal(first, batches.epoch_permutation(1, 0, 100))


def test_num_batches_and_batch_indices_drop_incomplete_batch():
  assert batches.num_batches(50_000, 100, drop_remainder=True) == 500
  assert batches.num_batches(105, 10, drop_remainder=True) == 10
  assert batches.num_batches(105, 10, drop_remainder=False) == 11

  indices = batches.batch_indices(seed=0, epoch=2, num_examples=105, batch_size=10)
  assert indices.shape == (10, 10)
  np.testing.assert_array_equal(indices.ravel(), batches.epoch_permutation(0, 2, 105)[:100])


# ---------------------------------------------------------------------------
# Lossy sources and the class-balanced subset.


def _whitened_folder_config(folder):
  return _folder_config(folder, zca_regularization=1e-2, cache_dir="none")


def _warnings_of(monkeypatch):
  logged = []
  monkeypatch.setattr(logging, "warning",
                      lambda message, *args: logged.append(message % args if args else message))
  return logged


def test_zca_whitened_jpeg_training_images_log_a_warning(tmp_path, monkeypatch):
  _make_folder(tmp_path)
  rng = np.random.default_rng(2)
  for i in range(IMAGES_PER_CLASS):  # One class of the training split as JPEG.
    os.remove(tmp_path / "train" / "cat" / f"{i:02d}.png")
    _write_image(str(tmp_path / "train" / "cat" / f"{i:02d}.JPG"), rng)
  logged = _warnings_of(monkeypatch)

  data = cache.load_whitened(_whitened_folder_config(tmp_path))

  assert data.train_x.shape == (12, SIZE, SIZE, 3)
  assert len(logged) == 1
  assert "lossy format (4 .jpg files)" in logged[0]
  assert "ZCA" in logged[0] and "NOT comparable" in logged[0]
  assert "cifar10_python" in logged[0]


def test_lossless_folder_and_original_files_log_no_warning(tmp_path, monkeypatch):
  _make_folder(tmp_path)  # PNG files.
  logged = _warnings_of(monkeypatch)
  cache.load_whitened(_whitened_folder_config(tmp_path))
  assert logged == []
  # A source other than 'folder' holds original pixels, whatever the folder holds.
  assert warn_if_lossy_and_whitened(
    _folder_config(tmp_path, source="cifar10_python", zca_regularization=1e-5)) is None


def test_class_balanced_subset_takes_the_first_of_each_class_in_file_order():
  labels = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2, 2])
  rows = batches.class_balanced_subset(labels, 6)
  np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(np.bincount(labels[rows]), [2, 2, 2])
  rows = batches.class_balanced_subset(labels, 9)
  np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5, 6, 7, 8])


@pytest.mark.parametrize("size, match", [(0, "positive multiple of the 3"),
                                         (7, "positive multiple of the 3"),
                                         (12, "class 0 has only 3")])
def test_class_balanced_subset_refuses_what_it_cannot_take(size, match):
  labels = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2, 2])
  with pytest.raises(ValueError, match=match):
    batches.class_balanced_subset(labels, size)


@pytest.mark.parametrize("name, first, then", [
    ("cifar10", "--config.data.source=cifar10_python", "--config.data.source=folder"),
    ("mnist", "--config.data.source=mnist", None)])
def test_offline_tfds_names_the_original_files_first(name, first, then, tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline(*args, **kwargs):
    raise OSError("no network")

  monkeypatch.setattr(tfds, "load", offline)
  with pytest.raises(RuntimeError) as error:
    sources.load_tfds(name, "train", str(tmp_path))
  message = str(error.value)
  assert "OSError: no network" in message and first in message
  if then:
    assert message.index(first) < message.index(then)
    assert "lossy" in message[message.index(then) - 120:]
