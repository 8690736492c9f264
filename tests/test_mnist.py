"""Tests for the MNIST files, checksums and binarization (`wn_jax.data.mnist`).

The tests write tiny IDX files themselves, with the header packed by hand
(`struct`), plain and gzip-compressed. `WN_JAX_MNIST_DIR=<folder>` also runs
the test on the real files.
"""

import gzip
import hashlib
import os
import re
import struct
import time

import jax
import numpy as np
import pytest

from wn_jax.data import mnist

# Type code -> big-endian dtype, written out from the IDX specification.
IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_bytes(array, code=0x08):
  array = np.asarray(array)
  header = struct.pack(">BBBB", 0, 0, code, array.ndim)
  header += b"".join(struct.pack(">I", size) for size in array.shape)
  return header + array.astype(IDX_CODES[code]).tobytes()


def _write(path, content, compress=False):
  with open(path, "wb") as f:
    f.write(gzip.compress(content) if compress else content)
  return str(path)


def _tiny_mnist(seed=0, num_train=5, num_test=3, size=4):
  rng = np.random.default_rng(seed)
  return mnist.MnistData(
    rng.integers(0, 256, size=(num_train, size, size), dtype=np.uint8),
    rng.integers(0, 10, size=num_train).astype(np.int32),
    rng.integers(0, 256, size=(num_test, size, size), dtype=np.uint8),
    rng.integers(0, 10, size=num_test).astype(np.int32),
  )


def _write_mnist(folder, data, compressed=(True, False, False, True)):
  """Writes `data` under the official names; file i gets `.gz` if compressed[i]."""
  os.makedirs(folder, exist_ok=True)
  arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
  for name, array, compress in zip(mnist.MNIST_FILES, arrays, compressed, strict=True):
    _write(os.path.join(folder, name + (".gz" if compress else "")), _idx_bytes(array), compress)
  return str(folder)


def _names_file(path):
  return re.escape(repr(str(path)))


# ---------------------------------------------------------------------------
# read_idx.


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
  images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
  path = _write(tmp_path / "images", _idx_bytes(images), compress)
  read = mnist.read_idx(path)
  assert read.dtype == np.uint8 and read.shape == (5, 28, 28)
  np.testing.assert_array_equal(read, images)
  read[0, 0, 0] = 1  # a writable array, not a view of the file's bytes


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
  labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
  gzip_without_suffix = _write(tmp_path / "labels", _idx_bytes(labels), compress=True)
  plain_with_suffix = _write(tmp_path / "labels.gz", _idx_bytes(labels), compress=False)
  np.testing.assert_array_equal(mnist.read_idx(gzip_without_suffix), labels)
  np.testing.assert_array_equal(mnist.read_idx(plain_with_suffix), labels)


@pytest.mark.parametrize("code", sorted(IDX_CODES))
def test_read_idx_other_types_are_big_endian(tmp_path, code):
  # 2 and 258 have different bytes in the two byte orders (where they fit).
  values = np.array([[-1, 2], [3, 100]]) if code in (0x08, 0x09) else np.array([[-1, 2], [258, 7]])
  if code == 0x08:
    values = np.abs(values)
  path = _write(tmp_path / "values", _idx_bytes(values, code))
  read = mnist.read_idx(path)
  assert read.dtype == np.dtype(IDX_CODES[code]).newbyteorder("=")
  assert read.dtype.isnative
  np.testing.assert_array_equal(read, values)


def test_read_idx_wrong_magic(tmp_path):
  content = bytearray(_idx_bytes(np.zeros((2, 2), np.uint8)))
  content[1] = 0x01
  path = _write(tmp_path / "bad-magic", bytes(content))
  with pytest.raises(ValueError, match=f"{_names_file(path)} is not an IDX file"):
    mnist.read_idx(path)


def test_read_idx_unknown_type_code(tmp_path):
  content = bytearray(_idx_bytes(np.zeros((2, 2), np.uint8)))
  content[2] = 0x0A
  path = _write(tmp_path / "bad-type", bytes(content))
  with pytest.raises(ValueError, match=f"{_names_file(path)} has the unknown type code 0x0A"):
    mnist.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_data(tmp_path, compress):
  content = _idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-1]
  path = _write(tmp_path / "truncated", content, compress)
  with pytest.raises(ValueError, match=f"{_names_file(path)} is truncated.*{len(content)} bytes"):
    mnist.read_idx(path)


def test_read_idx_truncated_header(tmp_path):
  path = _write(tmp_path / "short-header", _idx_bytes(np.zeros((3, 4, 4), np.uint8))[:10])
  with pytest.raises(ValueError, match=f"{_names_file(path)} is truncated.*16-byte header"):
    mnist.read_idx(path)
  path = _write(tmp_path / "two-bytes", b"\x00\x00")
  with pytest.raises(ValueError, match=f"{_names_file(path)} has 2 bytes"):
    mnist.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_trailing_bytes(tmp_path, compress):
  content = _idx_bytes(np.zeros((3, 4, 4), np.uint8)) + b"\x00"
  path = _write(tmp_path / "trailing", content, compress)
  with pytest.raises(ValueError, match=f"{_names_file(path)} is followed by trailing bytes"):
    mnist.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
  compressed = gzip.compress(_idx_bytes(np.zeros((3, 4, 4), np.uint8)))
  path = _write(tmp_path / "cut.gz", compressed[: len(compressed) // 2])
  with pytest.raises(ValueError, match=f"{_names_file(path)} starts like gzip"):
    mnist.read_idx(path)


# ---------------------------------------------------------------------------
# load_mnist.


@pytest.mark.parametrize("compressed", [(False,) * 4, (True,) * 4, (True, False, False, True)])
def test_load_mnist_round_trip(tmp_path, compressed):
  data = _tiny_mnist()
  loaded = mnist.load_mnist(_write_mnist(tmp_path / "mnist", data, compressed))
  for field in mnist.MnistData._fields:
    expected, got = getattr(data, field), getattr(loaded, field)
    assert got.dtype == (np.uint8 if "images" in field else np.int32), field
    np.testing.assert_array_equal(got, expected, err_msg=field)


def test_load_mnist_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=_names_file(tmp_path / "nowhere")):
    mnist.load_mnist(tmp_path / "nowhere")


def test_load_mnist_missing_file_lists_what_was_looked_for(tmp_path):
  folder = _write_mnist(tmp_path / "mnist", _tiny_mnist())
  os.remove(os.path.join(folder, "t10k-images-idx3-ubyte"))
  plain = os.path.join(folder, "t10k-images-idx3-ubyte")
  with pytest.raises(FileNotFoundError) as error:
    mnist.load_mnist(folder)
  message = str(error.value)
  assert repr(plain) in message and repr(plain + ".gz") in message
  assert "train-images-idx3-ubyte.gz" in message  # what the folder does hold


def test_load_mnist_label_count_mismatch(tmp_path):
  data = _tiny_mnist()
  folder = _write_mnist(tmp_path / "mnist", data._replace(test_labels=data.test_labels[:-1]))
  labels = os.path.join(folder, "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(ValueError, match=f"{_names_file(labels)} hold 2 labels.*3 images"):
    mnist.load_mnist(folder)


def test_load_mnist_images_must_be_3d(tmp_path):
  data = _tiny_mnist()
  folder = _write_mnist(
    tmp_path / "mnist", data._replace(train_images=data.train_images[..., None])
  )
  images = os.path.join(folder, "train-images-idx3-ubyte.gz")
  with pytest.raises(
    ValueError, match=f"{_names_file(images)} must be uint8 \\[N, height, width\\]"
  ):
    mnist.load_mnist(folder)


def test_load_mnist_labels_must_be_1d(tmp_path):
  data = _tiny_mnist()
  folder = _write_mnist(tmp_path / "mnist", data._replace(train_labels=data.train_labels[:, None]))
  labels = os.path.join(folder, "train-labels-idx1-ubyte")
  with pytest.raises(ValueError, match=f"{_names_file(labels)} must be uint8 \\[N\\]"):
    mnist.load_mnist(folder)


def test_load_mnist_labels_outside_0_to_9(tmp_path):
  data = _tiny_mnist()
  bad = data.train_labels.copy()
  bad[2] = 10
  folder = _write_mnist(tmp_path / "mnist", data._replace(train_labels=bad))
  labels = os.path.join(folder, "train-labels-idx1-ubyte")
  with pytest.raises(ValueError, match=f"{_names_file(labels)} lie in .*, 10\\], outside 0..9"):
    mnist.load_mnist(folder)


def test_load_mnist_train_and_test_sizes_must_agree(tmp_path):
  data = _tiny_mnist()
  folder = _write_mnist(tmp_path / "mnist", data._replace(test_images=data.test_images[:, :3]))
  with pytest.raises(ValueError, match=r"train images are \(4, 4\) but test images are \(3, 4\)"):
    mnist.load_mnist(folder)


# ---------------------------------------------------------------------------
# Checksums.


def test_verify_official_compares_uncompressed_md5(tmp_path, monkeypatch):
  data = _tiny_mnist()
  folder = _write_mnist(tmp_path / "mnist", data)
  assert mnist.verify_official(folder) == dict.fromkeys(mnist.MNIST_FILES, False)
  # Pin the tiny train images' content as "official": the .gz file on disk
  # must match by its uncompressed bytes.
  content_md5 = hashlib.md5(_idx_bytes(data.train_images)).hexdigest()
  monkeypatch.setitem(mnist.OFFICIAL_MD5, mnist.TRAIN_IMAGES, content_md5)
  assert mnist.verify_official(folder) == {
    name: name == mnist.TRAIN_IMAGES for name in mnist.MNIST_FILES
  }


def test_official_md5_are_the_published_ones():
  assert mnist.OFFICIAL_MD5 == {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
  }


def test_real_mnist_files():
  folder = os.environ.get("WN_JAX_MNIST_DIR")
  if not folder:
    pytest.skip("set WN_JAX_MNIST_DIR to the folder of the four official MNIST files")
  start = time.perf_counter()
  data = mnist.load_mnist(folder)
  load_seconds = time.perf_counter() - start
  assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == np.uint8
  assert data.test_images.shape == (10000, 28, 28) and data.test_images.dtype == np.uint8
  assert data.train_labels.shape == (60000,) and data.train_labels.dtype == np.int32
  assert data.test_labels.shape == (10000,) and data.test_labels.dtype == np.int32
  np.testing.assert_array_equal(data.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  np.testing.assert_array_equal(data.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
  np.testing.assert_array_equal(
    np.bincount(data.train_labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  )
  np.testing.assert_allclose(data.train_images.mean() / 255, 0.1306604762738429, rtol=1e-12)
  assert mnist.verify_official(folder) == dict.fromkeys(mnist.MNIST_FILES, True)
  print(f"load_mnist({folder!r}): {load_seconds:.2f} s")


@pytest.mark.slow  # imports TensorFlow: several seconds
def test_load_mnist_tfds_gives_the_same_format():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    data = mnist.load_mnist_tfds()
  for images, labels in (
    (data.train_images, data.train_labels),
    (data.test_images, data.test_labels),
  ):
    assert images.shape == (4, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (4,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9


# ---------------------------------------------------------------------------
# Binarization.


def test_pixel_probabilities():
  pixels = np.array([0, 51, 128, 255], dtype=np.uint8)
  probabilities = mnist.pixel_probabilities(pixels)
  assert probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities, [0.0, 0.2, 128 / 255, 1.0], rtol=1e-7)
  assert probabilities[-1] == 1.0
  with pytest.raises(ValueError, match="expects uint8 pixels, got float32"):
    mnist.pixel_probabilities(probabilities)


def test_fixed_binarization_is_numpy_default_rng_random():
  images = np.random.default_rng(5).integers(0, 256, size=(3, 6, 6), dtype=np.uint8)
  expected = (np.random.default_rng(11).random(images.shape) < images / 255).astype(np.uint8)
  got = mnist.fixed_binarization(images, seed=11)
  assert got.dtype == np.uint8 and got.shape == images.shape
  np.testing.assert_array_equal(got, expected)


def test_fixed_binarization_golden_value():
  # Pixels 0, 16, ..., 240 in each of 3 images. If this changes, the fixed
  # binarized test set changed, and with it every recorded test ELBO: never
  # update these numbers to make the test pass.
  images = np.arange(0, 256, 16, dtype=np.uint8).reshape(1, 4, 4).repeat(3, axis=0)
  got = mnist.fixed_binarization(images, seed=2016)
  assert np.packbits(got).tobytes().hex() == "00fd1fbf0873"


def test_fixed_binarization_deterministic_per_seed_and_differs_across_seeds():
  images = np.full((20, 8, 8), 128, dtype=np.uint8)
  first = mnist.fixed_binarization(images, seed=0)
  np.testing.assert_array_equal(mnist.fixed_binarization(images, seed=0), first)
  assert not np.array_equal(mnist.fixed_binarization(images, seed=1), first)


def test_fixed_binarization_mean_is_p_and_extremes_are_exact():
  pixels = np.array([0, 40, 128, 230, 255], dtype=np.uint8)
  num_draws = 20_000
  images = np.broadcast_to(pixels, (num_draws, len(pixels))).copy()
  binary = mnist.fixed_binarization(images, seed=3)
  assert set(np.unique(binary)) <= {0, 1}
  p = pixels / 255
  standard_error = np.sqrt(p * (1 - p) / num_draws)
  np.testing.assert_array_less(np.abs(binary.mean(axis=0) - p), 5 * standard_error + 1e-12)
  assert binary[:, 0].sum() == 0 and binary[:, -1].all()
  with pytest.raises(ValueError, match="expects uint8 pixels"):
    mnist.fixed_binarization(images / 255, seed=3)


def test_binarize_under_jit_is_bernoulli_p():
  pixels = np.array([0, 40, 128, 230, 255], dtype=np.uint8)
  num_draws = 20_000

  @jax.jit
  def draw(key, images):
    return mnist.binarize(key, mnist.pixel_probabilities(images))

  images = np.broadcast_to(pixels, (num_draws, len(pixels)))
  key = jax.random.key(0)
  binary = np.asarray(draw(key, images))
  assert binary.dtype == np.float32 and binary.shape == images.shape
  assert set(np.unique(binary)) <= {0.0, 1.0}
  p = pixels / 255
  standard_error = np.sqrt(p * (1 - p) / num_draws)
  np.testing.assert_array_less(np.abs(binary.mean(axis=0) - p), 5 * standard_error + 1e-12)
  assert binary[:, 0].sum() == 0 and binary[:, -1].all()
  np.testing.assert_array_equal(np.asarray(draw(key, images)), binary)
  assert not np.array_equal(np.asarray(draw(jax.random.key(1), images)), binary)
