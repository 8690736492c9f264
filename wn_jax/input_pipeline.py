"""Data in, arrays out: load CIFAR-style image data, scale, ZCA-whiten, augment.

The data recipe follows the authors' CIFAR-10 code (openai/weightnorm,
`lasagne/train.py` and `lasagne/nn.py`, class `ZCA`):

* pixels are scaled as `x = (uint8 - 127.5) / 128` (`scale_pixels`);
* a ZCA transform is fitted on all scaled training images, flattened to
  `[N, H * W * C]`, with regularisation 1e-5 added to the eigenvalues of the
  covariance, and the same transform is applied to the test set
  (`fit_zca`, `apply_zca`, `whiten_dataset`);
* the paper uses no augmentation. `augment` (random flips and translations)
  exists as an option that the paper configs leave off;
* the training set is visited in a new random order every epoch
  (`epoch_permutation`, `batch_indices`).

Everything here works on whole in-memory arrays (CIFAR-10 is 150 MB as uint8
and 600 MB as float32), so there is no tf.data pipeline: the training loop
indexes the whitened arrays with `batch_indices`.

Every source gives the same format, `images: uint8 [N, H, W, 3]`,
`labels: int32 [N]` and the class names:

* `source='folder'`: `<folder>/<split>/<class name>/<image file>`, read with
  Pillow (`load_folder`). Class names sorted alphabetically give the label
  indices, so the class list must be the same in every split;
* `source='tfds'`: a TensorFlow Datasets name (`load_tfds`), downloaded and
  prepared by tfds on first use;
* `source='cifar10_python'` / `'cifar10_binary'`: the original CIFAR-10
  files from https://www.cs.toronto.edu/~kriz/cifar.html, the authors'
  exact input (`load_cifar10`): `folder` is the extracted
  `cifar-10-batches-py` / `cifar-10-batches-bin` directory or the
  downloaded `.tar.gz` (or a `.tar.xz`) itself. Splits: 'train' (data_batch_1..5) and
  'test' (test_batch).
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import hashlib
import importlib.metadata
import json
import mmap
import os
import pickle
import tarfile
import tempfile
import time
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

CIFAR10_SOURCES = ("cifar10_python", "cifar10_binary")
VALID_SOURCES = ("tfds", "folder") + CIFAR10_SOURCES
# Sources whose files are named by `data_config.folder`.
PATH_SOURCES = ("folder",) + CIFAR10_SOURCES

FOLDER_LAYOUT = "<folder>/<split>/<class name>/<image file>"

# Examples per tf.data batch when reading a tfds split into memory; any size
# works, larger means fewer Python round trips.
_TFDS_READ_BATCH = 10_000

# How to get data when the expected folder or tfds download is not available;
# appended to the error messages below.
_FOLDER_HINT = (
  "Expected the layout " + FOLDER_LAYOUT + " (e.g. <folder>/train/airplane/"
  "0000.jpg). Extract the image tarball (e.g. `tar -xzf cifar10-jpeg.tar.gz "
  "-C <dir>`) and pass --config.data.source=folder "
  "--config.data.folder=<dir>/cifar10-jpeg, or use --config.data.source=tfds "
  "on a machine that can download."
)


class Dataset(NamedTuple):
  """A labelled train/test data set held in memory.

  Attributes:
    train_images: uint8 [num_train, height, width, 3].
    train_labels: int32 [num_train], values in [0, len(class_names)).
    test_images: uint8 [num_test, height, width, 3].
    test_labels: int32 [num_test].
    class_names: label index -> class name.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: list[str]


class ZCA(NamedTuple):
  """A fitted ZCA whitening transform, applied as `(x - mean) @ whitening`.

  Attributes:
    mean: float64 [dim], the per-feature mean of the fitting data.
    whitening: float64 [dim, dim], symmetric `U diag(1/sqrt(S + reg)) U^T`.
  """

  mean: np.ndarray
  whitening: np.ndarray


# ---------------------------------------------------------------------------
# Loading.


def _visible_entries(path: str) -> list[str]:
  """Sorted names in `path`, skipping hidden ones (`.DS_Store`, `._x.jpg`)."""
  return sorted(name for name in os.listdir(path) if not name.startswith("."))


def _read_rgb(path: str) -> np.ndarray:
  """Decodes one image file to uint8 [height, width, 3]."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    # PIL raises UnidentifiedImageError (an OSError) for non-images and
    # OSError / SyntaxError / ValueError for truncated or corrupt files.
    raise ValueError(f"Could not read {path!r} as an image: {type(e).__name__}: {e}") from e


def _list_split(root: str, split: str) -> tuple[list[str], list[str], list[int]]:
  """Finds the image files of one split: (class_names, paths, labels)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"Data folder {root!r} does not exist. {_FOLDER_HINT}")
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
      f"Split folder {split_dir!r} does not exist (data folder {root!r} "
      f"contains {_visible_entries(root)}). {_FOLDER_HINT}"
    )
  class_names = [
    name for name in _visible_entries(split_dir) if os.path.isdir(os.path.join(split_dir, name))
  ]
  if not class_names:
    raise ValueError(f"Split folder {split_dir!r} has no class folders. {_FOLDER_HINT}")
  paths, labels = [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(split_dir, class_name)
    # scandir's is_file() mostly needs no stat call: listing 60,000 files
    # stays cheap, which the data cache's fingerprint relies on.
    with os.scandir(class_dir) as entries:
      files = sorted(
        entry.path for entry in entries if not entry.name.startswith(".") and entry.is_file()
      )
    if not files:
      raise ValueError(
        f"Class folder {class_dir!r} (class {class_name!r}) has no image files. {_FOLDER_HINT}"
      )
    paths.extend(files)
    labels.extend([label] * len(files))
  return class_names, paths, labels


def load_folder(
  root: str, split: str, *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads `root/<split>/<class name>/<image file>` into memory.

  Class folders sorted alphabetically give the label indices; files within a
  class are read in sorted order, so the result is deterministic. Images are
  converted to RGB and must all have the same size. Hidden files and
  folders (names starting with '.') are skipped.

  Args:
    root: the data folder.
    split: the split's subfolder, e.g. 'train' or 'test'.
    num_threads: decoding threads (Pillow releases the GIL while decoding);
      None lets the thread pool choose.

  Returns:
    images: uint8 [num_examples, height, width, 3].
    labels: int32 [num_examples].
    class_names: [num_classes], label index -> class folder name.

  Raises:
    FileNotFoundError: `root` or `root/split` does not exist.
    ValueError: no class folders, an empty class folder, a file that is not
      a readable image, or images of different sizes.
  """
  class_names, paths, labels = _list_split(root, split)
  first = _read_rgb(paths[0])
  images = np.empty((len(paths),) + first.shape, dtype=np.uint8)

  def read_into(index: int) -> tuple[int, ...] | None:
    # Writing straight into `images` keeps peak memory at one copy.
    image = _read_rgb(paths[index])
    if image.shape != first.shape:
      return image.shape
    images[index] = image
    return None

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    shapes = list(pool.map(read_into, range(len(paths)), chunksize=256))

  odd = {}  # shape -> first file of that shape
  for path, shape in zip(paths, shapes):
    if shape is not None:
      odd.setdefault(shape, path)
  if odd:
    examples = [f"{first.shape[:2]}: {paths[0]!r}"] + [
      f"{shape[:2]}: {path!r}" for shape, path in odd.items()
    ]
    raise ValueError(
      f"Images in {os.path.join(root, split)!r} have different sizes "
      "(height, width); one file of each size: " + "; ".join(examples)
    )
  return images, np.asarray(labels, dtype=np.int32), class_names


def load_tfds(
  name: str, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Loads a whole TensorFlow Datasets split into memory.

  Uses `tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)`
  (which downloads and prepares the data set on first use) and reads it out
  in large batches. This is what `batch_size=-1` does, except that tfds
  4.9 turns `batch_size=-1` into `padded_batch(sys.maxsize)` when the
  split's size is not recorded (as under `tfds.testing.mock_data`), which
  aborts the process in TF 2.21.

  Args:
    name: a tfds name, optionally with config/version ('cifar10',
      'cifar10:3.0.2').
    split: a tfds split, e.g. 'train', 'test', 'train[:10%]'.
    data_dir: where tfds keeps its data; None for the tfds default.

  Returns:
    images: uint8 [num_examples, height, width, channels].
    labels: int32 [num_examples].
    class_names: [num_classes], from the data set's label feature.

  Raises:
    ValueError: `name` is not a tfds data set.
    RuntimeError: the data set could not be downloaded, prepared or read.
  """
  import tensorflow_datasets as tfds  # Lazy: TF import is slow and heavy.

  base_name = name.split(":")[0].split("/")[0]
  # Community data sets would need network access just to list them.
  if base_name not in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
      f"{name!r} is not a tfds data set name (not in "
      "tfds.list_builders()). For images on disk use "
      "--config.data.source=folder --config.data.folder=<path> with "
      f"the layout {FOLDER_LAYOUT}."
    )
  try:
    ds, info = tfds.load(
      name,
      split=split,
      data_dir=data_dir,
      as_supervised=True,
      with_info=True,
    )
    batches = list(tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)))
  except Exception as e:  # Download, prepare and read errors vary widely.
    raise RuntimeError(
      f"tfds could not load {name!r} split {split!r} "
      f"(data_dir={data_dir!r}): {type(e).__name__}: {e}\n"
      "Without network access, use images on disk instead: "
      "--config.data.source=folder --config.data.folder=<path> with "
      f"the layout {FOLDER_LAYOUT}."
    ) from e
  if not batches:
    raise RuntimeError(f"tfds split {name!r} {split!r} is empty.")
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches]).astype(np.int32)
  label_feature = info.features[info.supervised_keys[1]]
  return images.astype(np.uint8), labels, list(label_feature.names)


# The original CIFAR-10 files: 32x32 RGB images stored channel-major (CHW),
# 10,000 per batch file, in the python (pickle) and the binary version.
CIFAR10_SHAPE_CHW = (3, 32, 32)
CIFAR10_PIXELS = 3 * 32 * 32
CIFAR10_SPLIT_FILES = {
  "cifar10_python": {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
    "meta": "batches.meta",
    "dir": "cifar-10-batches-py",
  },
  "cifar10_binary": {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
    "meta": "batches.meta.txt",
    "dir": "cifar-10-batches-bin",
  },
}
_CIFAR10_HINT = (
  "Download cifar-10-python.tar.gz or cifar-10-binary.tar.gz from "
  "https://www.cs.toronto.edu/~kriz/cifar.html and pass "
  "--config.data.folder=<the .tar.gz or .tar.xz, or the cifar-10-batches-py / "
  "cifar-10-batches-bin directory it extracts to>."
)


class _Cifar10Files:
  """Reads the member files of a CIFAR-10 directory or .tar.gz / .tar.xz archive."""

  def __init__(self, path: str, source: str):
    self.path = path
    self.names = CIFAR10_SPLIT_FILES[source]
    self._all_names = [*self.names["train"], *self.names["test"], self.names["meta"]]
    self._archive_bytes: dict[str, bytes] | None = None
    if not path:
      raise ValueError(f"source={source!r} needs config.data.folder. {_CIFAR10_HINT}")
    if os.path.isdir(path):
      self._archive_members = None
    elif os.path.isfile(path):
      try:
        with tarfile.open(path) as archive:
          # Members are read by base name, so any top-level folder name works.
          self._archive_members = {
            os.path.basename(m.name): m.name for m in archive.getmembers() if m.isfile()
          }
      except tarfile.TarError as e:
        raise ValueError(
          f"{path!r} is neither a directory nor a readable tar archive: {e}. {_CIFAR10_HINT}"
        ) from e
    else:
      raise FileNotFoundError(f"CIFAR-10 data {path!r} does not exist. {_CIFAR10_HINT}")

  def read(self, name: str) -> bytes:
    """The bytes of member file `name` (e.g. 'data_batch_1')."""
    if self._archive_members is None:
      file_path = os.path.join(self.path, name)
      if not os.path.isfile(file_path):
        raise FileNotFoundError(
          f"CIFAR-10 file {file_path!r} is missing (directory {self.path!r} "
          f"contains {_visible_entries(self.path)}). {_CIFAR10_HINT}"
        )
      with open(file_path, "rb") as f:
        return f.read()
    if name not in self._archive_members:
      raise FileNotFoundError(
        f"CIFAR-10 file {name!r} is missing from the archive {self.path!r} "
        f"(it holds {sorted(self._archive_members)}). {_CIFAR10_HINT}"
      )
    if self._archive_bytes is None:
      # One pass over the archive for every file of the source: an .xz (or
      # .gz) stream can only be decompressed from its start, so opening it
      # once per member would decompress it once per member.
      wanted = {self._archive_members[n]: n for n in self._all_names if n in self._archive_members}
      self._archive_bytes = {}
      with tarfile.open(self.path) as archive:
        for member in archive:
          if member.name in wanted:
            self._archive_bytes[wanted[member.name]] = archive.extractfile(member).read()
    return self._archive_bytes[name]


def _chw_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
  """uint8 [N, 3072] rows (R plane, G plane, B plane) -> uint8 [N, 32, 32, 3]."""
  return np.ascontiguousarray(rows.reshape((-1,) + CIFAR10_SHAPE_CHW).transpose(0, 2, 3, 1))


def _read_cifar10_python_batch(files: _Cifar10Files, name: str) -> tuple[np.ndarray, np.ndarray]:
  where = f"{name!r} in {files.path!r}"
  try:
    # The batches are Python 2 pickles; bytes keys as in the original.
    batch = pickle.loads(files.read(name), encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise ValueError(f"CIFAR-10 batch {where} is not a readable pickle: {e}") from e
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"CIFAR-10 batch {where} has no b'data' / b'labels' (has {keys}).")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR10_PIXELS:
    raise ValueError(
      f"CIFAR-10 batch {where}: b'data' must be uint8 [N, {CIFAR10_PIXELS}], "
      f"got {data.dtype} {data.shape}."
    )
  if labels.shape != (data.shape[0],):
    raise ValueError(
      f"CIFAR-10 batch {where}: {labels.shape[0]} labels for {data.shape[0]} images."
    )
  return _chw_rows_to_hwc(data), labels.astype(np.int32)


def _read_cifar10_binary_batch(files: _Cifar10Files, name: str) -> tuple[np.ndarray, np.ndarray]:
  raw = np.frombuffer(files.read(name), dtype=np.uint8)
  record = 1 + CIFAR10_PIXELS
  if raw.size == 0 or raw.size % record:
    raise ValueError(
      f"CIFAR-10 binary file {name!r} in {files.path!r} has {raw.size} bytes, "
      f"not a positive multiple of the record size {record} (1 label byte + "
      f"{CIFAR10_PIXELS} pixel bytes)."
    )
  records = raw.reshape(-1, record)
  return _chw_rows_to_hwc(records[:, 1:]), records[:, 0].astype(np.int32)


def _read_cifar10_class_names(files: _Cifar10Files, source: str) -> list[str]:
  raw = files.read(files.names["meta"])
  if source == "cifar10_binary":
    return [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
  try:
    meta = pickle.loads(raw, encoding="bytes")
    return [name.decode("utf-8") for name in meta[b"label_names"]]
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(
      f"{files.names['meta']!r} in {files.path!r} has no readable b'label_names': {e}"
    ) from e


def load_cifar10(
  path: str, split: str, *, source: str = "cifar10_python"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads a split of the original CIFAR-10 files into memory.

  The python version holds pickled dicts with `b'data'`: uint8 [10000, 3072]
  (each row the 1024 red, then green, then blue pixels of one image, each
  plane row-major) and `b'labels'`; `batches.meta` holds `b'label_names'`.
  The binary version holds records of 1 label byte + 3072 pixel bytes in the
  same order; `batches.meta.txt` one class name per line.

  Args:
    path: the `cifar-10-batches-py` / `cifar-10-batches-bin` directory, or
      the `.tar.gz` or `.tar.xz` archive that contains it (any compression
      that `tarfile` reads).
    split: 'train' (data_batch_1..5, 50,000 images) or 'test' (test_batch).
    source: 'cifar10_python' or 'cifar10_binary'.

  Returns:
    images: uint8 [num_examples, 32, 32, 3] (HWC).
    labels: int32 [num_examples], in file order.
    class_names: [10], label index -> class name.

  Raises:
    FileNotFoundError: the path or one of the split's files is missing.
    ValueError: unknown split, unreadable pickle, wrong record size, labels
      out of range.
  """
  if source not in CIFAR10_SPLIT_FILES:
    raise ValueError(f"source must be one of {CIFAR10_SOURCES}, got {source!r}.")
  if split not in ("train", "test"):
    raise ValueError(
      f"source={source!r} has the splits 'train' (data_batch_1..5) and 'test' "
      f"(test_batch), got {split!r}."
    )
  files = _Cifar10Files(path, source)
  read_batch = (
    _read_cifar10_python_batch if source == "cifar10_python" else _read_cifar10_binary_batch
  )
  batches = [read_batch(files, name) for name in files.names[split]]
  class_names = _read_cifar10_class_names(files, source)
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  if labels.min() < 0 or labels.max() >= len(class_names):
    raise ValueError(
      f"CIFAR-10 {split!r} labels in {path!r} lie in [{labels.min()}, {labels.max()}], "
      f"outside the {len(class_names)} classes {class_names}."
    )
  return images, labels, class_names


# Image formats that lose information in encoding. ZCA divides every
# eigen-direction by its standard deviation, so the low-variance directions
# where such an encoder leaves its residue come out at unit variance.
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")


def lossy_files_in(root: str, split: str) -> dict[str, int]:
  """Counts the files of `<root>/<split>/<class>/` whose extension is lossy.

  Returns:
    {extension (lower case): number of files}; empty when none is lossy or
    the split folder does not exist.
  """
  split_dir = os.path.join(root, split)
  counts: dict[str, int] = {}
  if not os.path.isdir(split_dir):
    return counts
  for class_name in _visible_entries(split_dir):
    class_dir = os.path.join(split_dir, class_name)
    if not os.path.isdir(class_dir):
      continue
    with os.scandir(class_dir) as entries:
      for entry in entries:
        extension = os.path.splitext(entry.name)[1].lower()
        if extension in LOSSY_EXTENSIONS:
          counts[extension] = counts.get(extension, 0) + 1
  return counts


def warn_if_lossy_and_whitened(data_config: Any) -> str | None:
  """Logs (and returns) a warning when ZCA whitens lossily encoded images.

  Only `source='folder'` reads encoded image files; the tfds and CIFAR-10
  sources hold the original pixels.
  """
  if data_config.source != "folder":
    return None
  counts = lossy_files_in(data_config.folder, data_config.train_split)
  if not counts:
    return None
  found = ", ".join(f"{count} {extension}" for extension, count in sorted(counts.items()))
  message = (
    f"The training images in {os.path.join(data_config.folder, data_config.train_split)!r} "
    f"are in a lossy format ({found} files) and are ZCA-whitened (regularisation "
    f"{float(data_config.zca_regularization):g}). ZCA scales every eigen-direction of the "
    "pixel covariance to unit variance, so it amplifies the compression artefacts that live "
    "in the low-variance directions: results on this copy are NOT comparable with numbers "
    "on the original data (on CIFAR-10, use --config.data.source=cifar10_python). "
    "See docs/REPRODUCTION.md."
  )
  logging.warning(message)
  return message


def load_dataset(data_config: Any) -> Dataset:
  """Loads the train and test splits named by the data config.

  Args:
    data_config: an ml_collections.ConfigDict with keys
      `source` (one of VALID_SOURCES), `name` (tfds name, used by 'tfds'),
      `folder` (data folder or CIFAR-10 directory/archive, used by the
      PATH_SOURCES), `tfds_data_dir` (None or a path, used by 'tfds'),
      `train_split` and `test_split`.

  Returns:
    The Dataset, images uint8 [N, H, W, C], labels int32 [N].

  Raises:
    ValueError: unknown source, or train and test class lists differ; and
      the errors of `load_folder` / `load_tfds`.
  """
  source = data_config.source
  if source == "folder":
    load = functools.partial(load_folder, data_config.folder)
  elif source == "tfds":
    load = functools.partial(
      load_tfds, data_config.name, data_dir=data_config.tfds_data_dir or None
    )
  elif source in CIFAR10_SOURCES:
    load = functools.partial(load_cifar10, data_config.folder, source=source)
  else:
    raise ValueError(f"Unknown data source {source!r}; valid sources: {VALID_SOURCES}.")
  train_images, train_labels, class_names = load(split=data_config.train_split)
  test_images, test_labels, test_class_names = load(split=data_config.test_split)
  if class_names != test_class_names:
    raise ValueError(
      f"Train split {data_config.train_split!r} has classes "
      f"{class_names} but test split {data_config.test_split!r} has "
      f"{test_class_names}; labels would not match."
    )
  return Dataset(train_images, train_labels, test_images, test_labels, class_names)


# ---------------------------------------------------------------------------
# Scaling and ZCA whitening.


def scale_pixels(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to `(x - 127.5) / 128` as float32, same shape.

  This is the authors' `unpickle` scaling: values land in about [-1, 1).
  """
  return ((images.astype(np.float32) - 127.5) / 128.0).astype(np.float32)


class CovarianceSpectrum(NamedTuple):
  """The eigendecomposition of a data covariance, `sigma = U diag(S) U^T`.

  Attributes:
    mean: float64 [dim], the per-feature mean.
    eigenvalues: float64 [dim], S in ascending order, clipped at 0.
    eigenvectors: float64 [dim, dim], U; column i belongs to eigenvalue i.
  """

  mean: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray


def zca_input(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> the rows ZCA is fitted on: float32 [N, H*W*C],
  `scale_pixels` of each image flattened in HWC order."""
  return scale_pixels(images).reshape(images.shape[0], -1)


def covariance_spectrum(x: np.ndarray, *, chunk_size: int = 10_000) -> CovarianceSpectrum:
  """Mean and eigendecomposition of the covariance of `x: [num_examples, dim]`.

  The covariance is the biased (maximum-likelihood) estimate
  `sigma = (x - mean)^T (x - mean) / N`, divided by N, not N - 1, as in the
  authors' `nn.ZCA.fit`. They take `U, S` from an SVD of `sigma`; for a
  symmetric positive semi-definite matrix that is its eigendecomposition,
  which `np.linalg.eigh` computes here. Eigenvalues that round-off makes
  slightly negative are clipped to 0 (the SVD would return their absolute
  value, a difference of the order of float64 round-off).

  Everything is computed in float64; the covariance is accumulated over
  chunks of rows so that no float64 copy of `x` is made.

  Args:
    x: [num_examples, dim] float array (e.g. scaled, flattened images).
    chunk_size: rows per chunk when accumulating the covariance.

  Returns:
    CovarianceSpectrum(mean [dim], eigenvalues [dim] ascending,
    eigenvectors [dim, dim]), all float64.
  """
  if x.ndim != 2:
    raise ValueError(f"Expected x: [num_examples, dim], got {x.shape}.")
  num_examples, dim = x.shape
  mean = np.mean(x, axis=0, dtype=np.float64)
  sigma = np.zeros((dim, dim), dtype=np.float64)
  for start in range(0, num_examples, chunk_size):
    centred = x[start : start + chunk_size].astype(np.float64) - mean
    sigma += centred.T @ centred
  sigma /= num_examples
  eigenvalues, eigenvectors = np.linalg.eigh(sigma)
  return CovarianceSpectrum(mean, np.maximum(eigenvalues, 0.0), eigenvectors)


def zca_from_spectrum(spectrum: CovarianceSpectrum, regularization: float) -> ZCA:
  """`whitening = U diag(1 / sqrt(S + reg)) U^T` (the authors' `nn.ZCA`)."""
  gains = 1.0 / np.sqrt(spectrum.eigenvalues + regularization)
  whitening = (spectrum.eigenvectors * gains) @ spectrum.eigenvectors.T
  return ZCA(mean=spectrum.mean, whitening=whitening)


def fit_zca(x: np.ndarray, regularization: float, *, chunk_size: int = 10_000) -> ZCA:
  """Fits ZCA whitening to `x: [num_examples, dim]`, as in the authors' code.

  Matches `nn.ZCA.fit` in openai/weightnorm: `covariance_spectrum` gives
  `sigma = U diag(S) U^T` (biased covariance, float64) and
  `whitening = U diag(1 / sqrt(S + reg)) U^T`.

  Args:
    x: [num_examples, dim] float array (e.g. scaled, flattened images).
    regularization: added to every eigenvalue; the recipe uses 1e-5.
    chunk_size: rows per chunk when accumulating the covariance.

  Returns:
    ZCA(mean float64 [dim], whitening float64 [dim, dim]).
  """
  if x.ndim != 2:
    raise ValueError(f"fit_zca expects [num_examples, dim], got {x.shape}.")
  return zca_from_spectrum(covariance_spectrum(x, chunk_size=chunk_size), regularization)


def apply_zca(zca: ZCA, x: np.ndarray, *, chunk_size: int = 10_000) -> np.ndarray:
  """Whitens `x: [num_examples, dim]` as `(x - mean) @ whitening`.

  Computed in float64 chunk by chunk (bounded memory) and returned as
  float32 [num_examples, dim].
  """
  if x.ndim != 2 or x.shape[1] != zca.mean.shape[0]:
    raise ValueError(f"apply_zca expects [num_examples, {zca.mean.shape[0]}], got {x.shape}.")
  out = np.empty(x.shape, dtype=np.float32)
  for start in range(0, x.shape[0], chunk_size):
    chunk = x[start : start + chunk_size].astype(np.float64) - zca.mean
    out[start : start + chunk_size] = chunk @ zca.whitening
  return out


def whiten_dataset(dataset: Dataset, regularization: float) -> tuple[np.ndarray, np.ndarray]:
  """Scales pixels, fits ZCA on the whole training set, whitens both splits.

  Args:
    dataset: images uint8 [N, H, W, C] (train) and [M, H, W, C] (test).
    regularization: ZCA eigenvalue regularisation (recipe: 1e-5).

  Returns:
    train_x: float32 [N, H, W, C] and test_x: float32 [M, H, W, C], each
    image flattened to H*W*C, whitened, and reshaped back.
  """
  train_rows = zca_input(dataset.train_images)
  zca = fit_zca(train_rows, regularization)
  train_x = apply_zca(zca, train_rows)
  test_x = apply_zca(zca, zca_input(dataset.test_images))
  return (train_x.reshape(dataset.train_images.shape),
          test_x.reshape(dataset.test_images.shape))


# ---------------------------------------------------------------------------
# The data cache: load + whiten once, then read the arrays back.
#
# Loading CIFAR-10 from 60,000 JPEG files takes ~23 s and the ZCA fit + apply
# ~32 s on an idle 2-core CPU; reading the stored result back takes ~0.8 s. Two
# kinds of entry, each one .bin file named by a hash of what determines its
# content:
#   images-<hash>.bin    the uint8 Dataset; the hash covers the source, the
#                        splits and the input files (paths, sizes, mtimes,
#                        ctimes) or the tfds name, version and prepared files;
#   whitened-<hash>.bin  the float32 whitened arrays + labels + class names;
#                        the hash covers the images' hash and the ZCA
#                        regularisation.
# (Re-applying a stored ZCA matrix means a [50000, 3072] x [3072, 3072]
# float64 product, the larger part of the ZCA time, so the whitened arrays
# themselves are stored.) Files are written to a temporary name and renamed
# into place (atomic), so concurrent runs and crashes leave either no entry
# or a whole one; every array's size and CRC-32 are checked on read, and an
# entry that fails a check is rebuilt, never trusted.

CACHE_DIR_ENV = "WN_JAX_CACHE_DIR"
CACHE_OFF = "none"
# Bump when what an entry holds, or how it is computed, changes.
_CACHE_FORMAT = 1
# Most recently used entries kept per kind (a whitened CIFAR-10 entry is
# 720 MB, an images entry 180 MB).
CACHE_ENTRIES_KEPT = 4


class DataLoadReport(NamedTuple):
  """How `load_whitened` got its arrays, for the log.

  Attributes:
    load_seconds: reading the images (files, tfds, or the cache).
    whiten_seconds: fitting and applying ZCA (0 when read from the cache).
    cache: 'hit' (whitened arrays read from the cache), 'images' (images
      read from the cache, ZCA fitted), 'miss' (everything computed, cache
      written) or 'off'.
    cache_dir: the cache directory, None when off.
  """

  load_seconds: float
  whiten_seconds: float
  cache: str
  cache_dir: str | None


class WhitenedData(NamedTuple):
  """The training loop's input.

  Attributes:
    train_x: float32 [num_train, height, width, 3], ZCA-whitened.
    train_y: int32 [num_train].
    test_x: float32 [num_test, height, width, 3], whitened with the ZCA
      fitted on the training set.
    test_y: int32 [num_test].
    class_names: label index -> class name.
    report: timings and cache use.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  class_names: list[str]
  report: DataLoadReport


def resolve_cache_dir(configured: str) -> str | None:
  """The cache directory: `configured`, else $WN_JAX_CACHE_DIR, else
  $XDG_CACHE_HOME/wn_jax or ~/.cache/wn_jax; None if either is 'none'."""
  value = configured or os.environ.get(CACHE_DIR_ENV, "")
  if value.strip().lower() == CACHE_OFF:
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "wn_jax")


def _file_stats(paths: list[str], root: str) -> list[list]:
  """[relative path, size, mtime_ns, ctime_ns] per file: any rewrite changes
  the ctime, even one that restores size and mtime."""
  prefix = len(os.path.join(root, ""))  # `paths` lie under `root`; cheaper than relpath.
  stats = []
  for path in paths:
    st = os.stat(path)
    stats.append([path[prefix:], st.st_size, st.st_mtime_ns, st.st_ctime_ns])
  return stats


def _tfds_data_dir(configured: str | None) -> str:
  # tfds' own default (tfds.core.constants): $TFDS_DATA_DIR or ~/tensorflow_datasets.
  return os.path.abspath(os.path.expanduser(
    configured or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  ))


def dataset_fingerprint(data_config: Any) -> dict | None:
  """What determines the loaded images, as a JSON-able dict.

  Folder sources: the absolute path and every file's relative path, size,
  mtime and ctime. tfds: name, split names, data_dir, the tfds version and
  the files tfds prepared for the data set; None when tfds has not prepared
  it yet (nothing to fingerprint before the first load).

  Raises:
    The loader's FileNotFoundError / ValueError for a missing folder.
  """
  source = data_config.source
  fingerprint = {
    "format": _CACHE_FORMAT,
    "source": source,
    "train_split": data_config.train_split,
    "test_split": data_config.test_split,
  }
  if source == "folder":
    root = os.path.abspath(data_config.folder)
    fingerprint["folder"] = root
    for split in (data_config.train_split, data_config.test_split):
      _, paths, _ = _list_split(root, split)
      fingerprint[f"files:{split}"] = _file_stats(paths, root)
  elif source in CIFAR10_SOURCES:
    path = os.path.abspath(data_config.folder) if data_config.folder else ""
    names = CIFAR10_SPLIT_FILES[source]
    if os.path.isdir(path):
      members = names["train"] + names["test"] + [names["meta"]]
      paths = [os.path.join(path, name) for name in members]
      if not all(os.path.isfile(p) for p in paths):
        return None  # The loader names the missing file.
      fingerprint["folder"], fingerprint["files"] = path, _file_stats(paths, path)
    elif os.path.isfile(path):
      fingerprint["archive"] = path
      fingerprint["files"] = _file_stats([path], os.path.dirname(path))
    else:
      return None
  elif source == "tfds":
    data_dir = _tfds_data_dir(data_config.tfds_data_dir or None)
    base_name = data_config.name.split(":")[0].split("/")[0]
    prepared = sorted(
      p for p in glob.glob(os.path.join(data_dir, base_name, "**"), recursive=True)
      if os.path.isfile(p)
    )
    if not prepared:
      return None
    fingerprint.update(
      name=data_config.name,
      data_dir=data_dir,
      tfds_version=importlib.metadata.version("tensorflow-datasets"),
      files=_file_stats(prepared, data_dir),
    )
  else:
    raise ValueError(f"Unknown data source {source!r}; valid sources: {VALID_SOURCES}.")
  return fingerprint


def _hash(content: Any) -> str:
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def _whitened_key(images_key: str, regularization: float) -> str:
  return _hash({"images": images_key, "zca_regularization": regularization,
                "format": _CACHE_FORMAT})


_CACHE_MAGIC = b"wn_jax data cache 1\n"


def _bytes_of(array: np.ndarray) -> memoryview:
  """A flat byte view of a C-contiguous array (any dtype, strings included)."""
  return memoryview(array.reshape(-1).view(np.uint8))


def _write_cache_entry(path: str, key: str, arrays: dict) -> None:
  """Writes `arrays` to `path` atomically; logs and goes on if the disk
  refuses (the run does not need its cache).

  Layout: a magic line, an 8-byte header length, a JSON header (the key,
  and each array's name, dtype, shape, size and CRC-32), then the raw bytes
  of every array in header order, so that `_read_cache_entry` can map them
  (np.load of an .npz of the same arrays takes ~2.5 s).
  """
  arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
  header = json.dumps({"key": key, "arrays": [
    {"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
     "nbytes": array.nbytes, "crc32": zlib.crc32(_bytes_of(array))}
    for name, array in arrays.items()]}).encode()
  directory = os.path.dirname(path)
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(_CACHE_MAGIC + len(header).to_bytes(8, "little") + header)
      for array in arrays.values():
        f.write(_bytes_of(array))
    os.replace(tmp, path)  # Atomic: readers see the old file or the new one.
    tmp = None
  except OSError as e:
    logging.warning("Could not write the data cache file %s (%s); continuing without it.",
                    path, e)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def _read_cache_entry(path: str, key: str, names: tuple[str, ...]) -> dict | None:
  """The arrays of a cache file, or None if it is absent or not sound.

  Sound: the magic line, a header for `key` listing exactly `names`, every
  array whole (no truncation, nothing after the last) with its CRC-32. A
  file that fails any check is logged and treated as absent (then rebuilt
  and replaced).

  The arrays are read-only views of the file, memory-mapped (~0.2 s for
  CIFAR-10's 720 MB where reading into fresh memory takes 0.5-1.2 s). Cache
  files are only ever replaced by a rename, never rewritten in place, so a
  mapping stays valid for as long as the arrays live.
  """
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if f.read(len(_CACHE_MAGIC)) != _CACHE_MAGIC:
        raise ValueError("not a data cache file")
      header_size = int.from_bytes(f.read(8), "little")
      if not 0 < header_size < 2**20:
        raise ValueError(f"implausible header size {header_size}")
      header = json.loads(f.read(header_size))
      if header["key"] != key:
        raise ValueError("it was written for another key")
      if tuple(spec["name"] for spec in header["arrays"]) != names:
        raise ValueError("it holds other arrays")
      offset = len(_CACHE_MAGIC) + 8 + header_size
      end = offset + sum(spec["nbytes"] for spec in header["arrays"])
      if end != size:
        raise ValueError(f"{size} bytes where the header describes {end} (truncated or padded)")
      mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ)
    arrays = {}
    for spec in header["arrays"]:
      dtype = np.dtype(spec["dtype"])
      array = np.frombuffer(mapped, np.uint8, count=spec["nbytes"], offset=offset)
      offset += spec["nbytes"]
      if zlib.crc32(array) != spec["crc32"]:
        raise ValueError(f"array {spec['name']!r} fails its CRC-32 check")
      arrays[spec["name"]] = array.view(dtype).reshape(spec["shape"])
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    # (json.JSONDecodeError is a ValueError.)
    logging.warning("Ignoring the unsound cache file %s (%s: %s); rebuilding it.",
                    path, type(e).__name__, e)
    return None
  try:
    os.utime(path)  # Marks it recently used (see _evict_old_entries).
  except OSError:  # A read-only cache directory still serves.
    pass
  return arrays


def _evict_old_entries(cache_dir: str, kind: str) -> None:
  """Keeps the CACHE_ENTRIES_KEPT most recently used `kind` entries."""
  entries = glob.glob(os.path.join(cache_dir, f"{kind}-*.bin"))
  try:
    entries.sort(key=os.path.getmtime, reverse=True)
    for stale in entries[CACHE_ENTRIES_KEPT:]:
      os.remove(stale)
  except OSError:  # Another run removed or replaced one meanwhile.
    pass


_IMAGE_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")
_WHITENED_ARRAYS = ("train_x", "train_y", "test_x", "test_y", "class_names")


def load_whitened(data_config: Any) -> WhitenedData:
  """Loads the data set and ZCA-whitens it, through the on-disk cache.

  Composes `load_dataset` and `whiten_dataset`; with the cache on
  (`data_config.cache_dir`, see `resolve_cache_dir`) their results are
  stored and read back on the next start with the same inputs: the same
  files (by path, size, mtime and ctime) or tfds data, the same splits and
  the same `zca_regularization`. The arrays are the same either way.

  Args:
    data_config: the config's `data` block (the keys of `load_dataset`,
      plus `zca_regularization` and `cache_dir`).

  Returns:
    WhitenedData: float32 whitened images [N, H, W, C], int32 labels [N],
    class names, and a DataLoadReport.
  """
  warn_if_lossy_and_whitened(data_config)
  start = time.perf_counter()
  regularization = float(data_config.zca_regularization)
  cache_dir = resolve_cache_dir(data_config.cache_dir)
  images_key = whitened_key = None
  if cache_dir is not None:
    fingerprint = dataset_fingerprint(data_config)
    if fingerprint is not None:
      images_key = _hash(fingerprint)
      whitened_key = _whitened_key(images_key, regularization)
      stored = _read_cache_entry(
        os.path.join(cache_dir, f"whitened-{whitened_key}.bin"), whitened_key, _WHITENED_ARRAYS)
      if stored is not None and _consistent(stored["train_x"], stored["train_y"], stored["test_x"],
                                            stored["test_y"], stored["class_names"]):
        report = DataLoadReport(time.perf_counter() - start, 0.0, "hit", cache_dir)
        return WhitenedData(
          stored["train_x"], stored["train_y"], stored["test_x"], stored["test_y"],
          [str(name) for name in stored["class_names"]], report)

  dataset, cache = None, "off" if cache_dir is None else "miss"
  if images_key is not None:
    stored = _read_cache_entry(
      os.path.join(cache_dir, f"images-{images_key}.bin"), images_key, _IMAGE_ARRAYS)
    if stored is not None and _consistent(*(stored[name] for name in _IMAGE_ARRAYS)):
      dataset = Dataset(**{name: stored[name] for name in _IMAGE_ARRAYS[:-1]},
                        class_names=[str(name) for name in stored["class_names"]])
      cache = "images"
  if dataset is None:
    dataset = load_dataset(data_config)
    if cache_dir is not None:
      if images_key is None:  # tfds prepared its files just now.
        fingerprint = dataset_fingerprint(data_config)
        if fingerprint is not None:
          images_key = _hash(fingerprint)
          whitened_key = _whitened_key(images_key, regularization)
      if images_key is not None:
        arrays = dataset._asdict()
        arrays["class_names"] = np.asarray(dataset.class_names)
        _write_cache_entry(os.path.join(cache_dir, f"images-{images_key}.bin"), images_key, arrays)
        _evict_old_entries(cache_dir, "images")
  load_seconds = time.perf_counter() - start

  start = time.perf_counter()
  train_x, test_x = whiten_dataset(dataset, regularization)
  whiten_seconds = time.perf_counter() - start
  if whitened_key is not None:
    arrays = dict(train_x=train_x, train_y=dataset.train_labels, test_x=test_x,
                  test_y=dataset.test_labels, class_names=np.asarray(dataset.class_names))
    _write_cache_entry(os.path.join(cache_dir, f"whitened-{whitened_key}.bin"), whitened_key,
                       arrays)
    _evict_old_entries(cache_dir, "whitened")
  report = DataLoadReport(load_seconds, whiten_seconds, cache, cache_dir)
  return WhitenedData(train_x, dataset.train_labels, test_x, dataset.test_labels,
                      dataset.class_names, report)


def _consistent(train_x, train_y, test_x, test_y, class_names) -> bool:
  """Shapes and dtypes of a cache entry agree with each other."""
  sound = (
    train_x.ndim == test_x.ndim == 4 and train_x.shape[1:] == test_x.shape[1:]
    and train_y.shape == (len(train_x),) and test_y.shape == (len(test_x),)
    and train_y.dtype == test_y.dtype == np.int32 and class_names.ndim == 1
  )
  if not sound:
    logging.warning("Ignoring a cache entry with inconsistent shapes; rebuilding it.")
  return sound


# ---------------------------------------------------------------------------
# Augmentation (off in the paper's recipe) and batching.


@functools.partial(jax.jit, static_argnames=("flip", "max_translation"))
def augment(key: jax.Array, images: jax.Array, flip: bool, max_translation: int) -> jax.Array:
  """Random horizontal flips and translations, drawn per image from `key`.

  Jitted with `flip` and `max_translation` static (they come from the
  config); it can also be called inside a jitted train step.

  Args:
    key: PRNG key; the same key gives the same output.
    images: [batch, height, width, channels], any dtype.
    flip: mirror each image left-right with probability 1/2.
    max_translation: shift each image by an integer offset drawn uniformly
      from [-max_translation, max_translation] in each of height and width,
      filling the uncovered border with zeros (which is the data mean after
      whitening). 0 disables it.

  Returns:
    [batch, height, width, channels], same dtype. With flip=False and
    max_translation=0 the input is returned unchanged.
  """
  if max_translation < 0:
    raise ValueError(f"max_translation must be >= 0, got {max_translation}.")
  batch, height, width, channels = images.shape
  flip_key, shift_key = jax.random.split(key)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
  if max_translation > 0:
    pad = max_translation
    shifts = jax.random.randint(shift_key, (batch, 2), -pad, pad + 1)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image, shift):
      start = (pad + shift[0], pad + shift[1], 0)
      return jax.lax.dynamic_slice(image, start, (height, width, channels))

    images = jax.vmap(crop)(padded, shifts)
  return images


def class_balanced_subset(labels: np.ndarray, size: int) -> np.ndarray:
  """Indices of the first `size / num_classes` examples of every class.

  Taken in file order, so the same images are chosen from any copy of a
  data set that keeps each class's order (the original CIFAR-10 files and
  the JPEG copy do; see docs/REPRODUCTION.md).

  Args:
    labels: int [num_examples], values in [0, num_classes).
    size: examples to keep, a multiple of the number of classes.

  Returns:
    int64 [size], increasing.

  Raises:
    ValueError: `size` is not a positive multiple of the number of classes,
      or a class has fewer than `size / num_classes` examples.
  """
  classes, counts = np.unique(labels, return_counts=True)
  if size <= 0 or size % len(classes):
    raise ValueError(
      f"A class-balanced subset needs a positive multiple of the {len(classes)} "
      f"classes, got {size}.")
  per_class = size // len(classes)
  if counts.min() < per_class:
    raise ValueError(
      f"A subset of {size} needs {per_class} examples of each class, but class "
      f"{classes[counts.argmin()]} has only {counts.min()}.")
  chosen = [np.flatnonzero(labels == c)[:per_class] for c in classes]
  return np.sort(np.concatenate(chosen))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the training set.

  A fresh permutation every epoch (as in the authors' code), reproducible
  from (seed, epoch) alone, so a resumed run sees the same order.

  Returns:
    int64 [num_examples], a permutation of range(num_examples).
  """
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool) -> int:
  """Batches per pass: floor if `drop_remainder` (training), else ceil (eval)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def batch_indices(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Training-set indices for every batch of one epoch.

  The epoch's permutation cut into full batches; the last incomplete batch
  is dropped (CIFAR-10: 50,000 / 100 = 500 batches, nothing dropped).

  Returns:
    int64 [num_batches, batch_size]; row i indexes batch i.
  """
  steps = num_batches(num_examples, batch_size, drop_remainder=True)
  order = epoch_permutation(seed, epoch, num_examples)
  return order[: steps * batch_size].reshape(steps, batch_size)
