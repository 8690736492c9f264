"""The original CIFAR-10 files, the authors' exact input (`load_cifar10`).

From https://www.cs.toronto.edu/~kriz/cifar.html: `source='cifar10_python'`
(pickles) or `'cifar10_binary'`, read from the extracted
`cifar-10-batches-py` / `cifar-10-batches-bin` directory or from the
downloaded `.tar.gz` (or a `.tar.xz`) itself. Splits: 'train'
(data_batch_1..5) and 'test' (test_batch).

This module decodes the files into uint8 HWC arrays; it does not choose
sources, whiten or cache (`sources`, `zca`, `cache`).
"""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np

from wn_jax.data.folder import visible_entries

CIFAR10_SOURCES = ("cifar10_python", "cifar10_binary")

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
          f"contains {visible_entries(self.path)}). {_CIFAR10_HINT}"
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
