"""MNIST for the VAE experiments: the IDX files, their checksums, binarization.

The four files of the official distribution (http://yann.lecun.com/exdb/mnist/)
are read from one folder, each under its official name, gzip-compressed or
not (`load_mnist`); `load_mnist_tfds` reads the tfds copy into the same
`MnistData`. Images stay uint8 in [0, 255] (white digits on black).

The VAE treats pixels as Bernoulli probabilities, `p = uint8 / 255`
(`pixel_probabilities`), and sees binary images: a fresh binarization of
every training batch, drawn inside the jitted train step (`binarize`), and
one fixed binarization of the test set, the same in every run
(`fixed_binarization`).

Nothing here knows about models or training.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wn_jax.data.folder import visible_entries
from wn_jax.data.sources import load_tfds

NUM_CLASSES = 10

# The official names, without `.gz`; either form is read.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# MD5 of each official file's uncompressed bytes, as the data set loaders in
# wide use pin them (torchvision's `MNIST.resources`, among others). Of the
# .gz files only the content is fixed: the gzip header varies by compressor.
OFFICIAL_MD5 = {
  TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
  TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
  TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
  TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type codes (the third byte of the magic number) and the big-endian
# dtype each one stores.
_IDX_DTYPES = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_MNIST_HINT = (
  "Expected the four files of the official MNIST distribution, under their "
  f"official names {list(MNIST_FILES)}, each with or without `.gz`."
)


class MnistData(NamedTuple):
  """MNIST in memory, in file order.

  Attributes:
    train_images: uint8 [num_train, height, width] (60,000 x 28 x 28).
    train_labels: int32 [num_train], values in [0, 10).
    test_images: uint8 [num_test, height, width] (10,000 x 28 x 28).
    test_labels: int32 [num_test].
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def _read_content(path: str) -> tuple[bytes, bool]:
  """The bytes of `path`, decompressed when it is gzip (by its magic bytes),
  and whether it was."""
  with open(path, "rb") as f:
    raw = f.read()
  if not raw.startswith(_GZIP_MAGIC):
    return raw, False
  try:
    return gzip.decompress(raw), True
  except (OSError, EOFError, zlib.error) as e:
    # BadGzipFile (an OSError) for a bad header, EOFError for a cut-off
    # stream, zlib.error for corrupt compressed data.
    raise ValueError(f"{path!r} starts like gzip but does not decompress: {e}") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file, gzip-compressed or not.

  The IDX format: a magic number of two zero bytes, a type code (0x08
  uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and
  the number of dimensions; then one big-endian 32-bit size per dimension;
  then the values, big-endian, row-major. A file that starts with the gzip
  magic bytes is decompressed first, whatever its name.

  Args:
    path: the file.

  Returns:
    The values with the shape the header gives, in the stored type in native
    byte order (uint8 for the MNIST files); a new, writable array.

  Raises:
    ValueError: naming the file, when the magic number is wrong, the type
      code unknown, or the data shorter (truncated) or longer (trailing
      bytes) than the header's sizes imply.
  """
  path = os.fspath(path)
  content, was_gzip = _read_content(path)
  if len(content) < 4:
    raise ValueError(
      f"IDX file {path!r} has {len(content)} bytes, fewer than the 4-byte magic number."
    )
  zero_0, zero_1, type_code, ndim = content[:4]
  if zero_0 != 0 or zero_1 != 0:
    raise ValueError(
      f"{path!r} is not an IDX file: its magic number {content[:4].hex()} does not "
      "start with two zero bytes."
    )
  if type_code not in _IDX_DTYPES:
    known = ", ".join(f"0x{code:02X} ({dt.name})" for code, dt in _IDX_DTYPES.items())
    raise ValueError(
      f"IDX file {path!r} has the unknown type code 0x{type_code:02X}; known: {known}."
    )
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise ValueError(
      f"IDX file {path!r} is truncated: {len(content)} bytes, fewer than the "
      f"{header_size}-byte header of a {ndim}-dimensional array."
    )
  shape = struct.unpack(f">{ndim}I", content[4:header_size])
  dtype = _IDX_DTYPES[type_code]
  # A Python int product: the sizes of a corrupt header can overflow int64.
  num_values = 1
  for size in shape:
    num_values *= size
  expected = header_size + num_values * dtype.itemsize
  if len(content) != expected:
    problem = "truncated" if len(content) < expected else "followed by trailing bytes"
    raise ValueError(
      f"IDX file {path!r} is {problem}: the header gives shape {shape} of {dtype.name}, "
      f"{expected} bytes in all, but the file holds {len(content)} bytes"
      + (" after decompression." if was_gzip else ".")
    )
  values = np.frombuffer(content, dtype=dtype, count=num_values, offset=header_size)
  # astype copies: the result is writable and in native byte order.
  return values.astype(dtype.newbyteorder("=")).reshape(shape)


def _find(folder: str, name: str) -> str:
  """The path of `name` or `name.gz` in `folder` (the uncompressed one if both)."""
  candidates = [os.path.join(folder, name), os.path.join(folder, name + ".gz")]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(
    f"MNIST file {name!r} is missing: looked for {candidates}; the folder "
    f"holds {visible_entries(folder)}. {_MNIST_HINT}"
  )


def _check_split(
  images: np.ndarray, labels: np.ndarray, split: str, images_from: str, labels_from: str
) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split's arrays; returns images uint8 and labels int32."""
  if images.dtype != np.uint8 or images.ndim != 3:
    raise ValueError(
      f"MNIST {split} images {images_from!r} must be uint8 [N, height, width], "
      f"got {images.dtype} {images.shape}."
    )
  if labels.dtype != np.uint8 or labels.ndim != 1:
    raise ValueError(
      f"MNIST {split} labels {labels_from!r} must be uint8 [N], got {labels.dtype} {labels.shape}."
    )
  if len(labels) != len(images):
    raise ValueError(
      f"MNIST {split} labels {labels_from!r} hold {len(labels)} labels but the images "
      f"{images_from!r} hold {len(images)} images."
    )
  if len(labels) and labels.max() >= NUM_CLASSES:
    raise ValueError(
      f"MNIST {split} labels {labels_from!r} lie in [{labels.min()}, {labels.max()}], "
      f"outside 0..{NUM_CLASSES - 1}."
    )
  return images, labels.astype(np.int32)


def _check_sizes_agree(data: MnistData, where: str) -> MnistData:
  if data.train_images.shape[1:] != data.test_images.shape[1:]:
    raise ValueError(
      f"MNIST in {where!r}: train images are {data.train_images.shape[1:]} but test "
      f"images are {data.test_images.shape[1:]}."
    )
  return data


def load_mnist(folder: str | os.PathLike) -> MnistData:
  """Reads the four MNIST files in `folder` into memory.

  Each file is looked for under its official name (`MNIST_FILES`) with and
  without `.gz`; if both exist the uncompressed one is read. Compression is
  detected from the content (`read_idx`). The checksums are not required to
  match (`verify_official` checks them), so any images and labels in the
  same format load.

  Args:
    folder: the folder that holds the files.

  Returns:
    MnistData: images uint8 [N, height, width], labels int32 [N] in [0, 10).

  Raises:
    FileNotFoundError: the folder or one of the files is missing (the
      message lists the paths looked for).
    ValueError: the errors of `read_idx`; images not uint8 [N, H, W] or
      labels not uint8 [N]; label and image counts differ; labels outside
      0..9; train and test images of different sizes.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"MNIST folder {folder!r} does not exist. {_MNIST_HINT}")
  paths = {name: _find(folder, name) for name in MNIST_FILES}
  arrays = {name: read_idx(path) for name, path in paths.items()}
  train = _check_split(
    arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS], "train", paths[TRAIN_IMAGES], paths[TRAIN_LABELS]
  )
  test = _check_split(
    arrays[TEST_IMAGES], arrays[TEST_LABELS], "test", paths[TEST_IMAGES], paths[TEST_LABELS]
  )
  return _check_sizes_agree(MnistData(*train, *test), folder)


def load_mnist_tfds(data_dir: str | None = None) -> MnistData:
  """Reads tfds `mnist` (splits 'train' and 'test') into `MnistData`.

  tfds downloads and prepares the data set on first use, so this needs
  network access once; `load_mnist` reads the original files instead.

  Args:
    data_dir: where tfds keeps its data; None for the tfds default.

  Returns:
    MnistData, as `load_mnist` (tfds's [N, 28, 28, 1] images squeezed to
    [N, 28, 28]).

  Raises:
    RuntimeError: tfds could not load the data set (see `sources.load_tfds`).
    ValueError: the arrays are not MNIST-shaped, as in `load_mnist`.
  """
  splits = []
  for split in ("train", "test"):
    images, labels, _ = load_tfds("mnist", split, data_dir)
    where = f"tfds mnist {split!r}"
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f"{where} images must be [N, height, width, 1], got {images.shape}.")
    # load_tfds gives int32 labels; the checks expect the IDX files' uint8.
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
      raise ValueError(f"{where} labels lie in [{labels.min()}, {labels.max()}], outside 0..9.")
    splits.append(_check_split(images[..., 0], labels.astype(np.uint8), split, where, where))
  return _check_sizes_agree(MnistData(*splits[0], *splits[1]), "tfds mnist")


def file_md5(path: str | os.PathLike) -> str:
  """The MD5 hex digest of a file's content, after decompression if it is gzip."""
  return hashlib.md5(_read_content(os.fspath(path))[0]).hexdigest()


def verify_official(folder: str | os.PathLike) -> dict[str, bool]:
  """Which of the four MNIST files in `folder` are the official ones.

  Compares the MD5 of each file's uncompressed content with `OFFICIAL_MD5`,
  so a re-compressed copy of the official files passes.

  Args:
    folder: the folder `load_mnist` reads.

  Returns:
    {official name: whether its content has the official MD5}, for the four
    names in `MNIST_FILES`.

  Raises:
    FileNotFoundError: the folder or one of the files is missing.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"MNIST folder {folder!r} does not exist. {_MNIST_HINT}")
  return {name: file_md5(_find(folder, name)) == OFFICIAL_MD5[name] for name in MNIST_FILES}


def pixel_probabilities(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """Pixels as Bernoulli probabilities: `uint8 / 255`, float32 in [0, 1].

  Works on NumPy arrays (returns one) and inside jit on jax arrays.

  Args:
    images: uint8 [...], e.g. [batch, 28, 28].

  Returns:
    float32 [...]: 0 -> 0.0, 255 -> 1.0.

  Raises:
    ValueError: `images` is not uint8 (already scaled values would be
      divided by 255 a second time).
  """
  if images.dtype != np.uint8:
    raise ValueError(f"pixel_probabilities expects uint8 pixels, got {images.dtype}.")
  return images.astype(np.float32) / np.float32(255)


def binarize(key: jax.Array, probabilities: jax.Array) -> jax.Array:
  """One Bernoulli draw per pixel (dynamic binarization); jit-friendly.

  Called inside the train step with a fresh key per step, so every epoch
  sees a new binarization of the training images.

  Args:
    key: PRNG key; the same key gives the same draw.
    probabilities: float [...] in [0, 1] (`pixel_probabilities`).

  Returns:
    float32 [...] of 0.0 and 1.0, 1.0 with probability `probabilities`.
  """
  return jax.random.bernoulli(key, probabilities).astype(jnp.float32)


def fixed_binarization(images: np.ndarray, seed: int) -> np.ndarray:
  """One fixed, seeded binarization (for the test set): uint8 0/1.

  Pixel x becomes 1 when u < x / 255, with u uniform in [0, 1) drawn in
  C order from NumPy's PCG64 seeded with `seed`: u is
  `np.random.default_rng(seed).random(images.shape)`, computed here from the
  bit generator's raw 64-bit outputs (`(raw >> 11) * 2**-53`, what
  `random()` does), because NumPy guarantees the bit generators' streams
  across versions, not those of `Generator` methods. Neither jax nor the
  device is involved, so the result is the same on every call, machine and
  jax version. 0 always gives 0 and 255 always gives 1.

  Args:
    images: uint8 [...], e.g. the test images [10000, 28, 28]. Holds 8
      bytes per pixel while drawing (63 MB for the MNIST test set).
    seed: a non-negative int.

  Returns:
    uint8 [...] of 0 and 1, the same shape as `images`.

  Raises:
    ValueError: `images` is not uint8.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"fixed_binarization expects uint8 pixels, got {images.dtype}.")
  raw = np.random.PCG64(seed).random_raw(images.size).reshape(images.shape)
  uniform = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
  return (uniform < images / 255.0).astype(np.uint8)
