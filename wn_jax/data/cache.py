"""The on-disk data cache: load + whiten once, then read the arrays back.

`load_whitened` is the data's front door for training: `sources.load_dataset`
and `zca.whiten_dataset`, with their results stored under a key that says
what determines them (fingerprints, entries, CRC checks, eviction). It adds
no transformation of its own: the arrays are the same with the cache on or
off. Batching and augmentation are not here (`batches`).

Loading CIFAR-10 from 60,000 JPEG files takes ~23 s and the ZCA fit + apply
~32 s on an idle 2-core CPU; reading the stored result back takes ~0.8 s. Two
kinds of entry, each one .bin file named by a hash of what determines its
content:
  images-<hash>.bin    the uint8 Dataset; the hash covers the source, the
                       splits and the input files (paths, sizes, mtimes,
                       ctimes) or the tfds name, version and prepared files;
  whitened-<hash>.bin  the float32 whitened arrays + labels + class names;
                       the hash covers the images' hash and the ZCA
                       regularisation.
(Re-applying a stored ZCA matrix means a [50000, 3072] x [3072, 3072]
float64 product, the larger part of the ZCA time, so the whitened arrays
themselves are stored.) Files are written to a temporary name and renamed
into place (atomic), so concurrent runs and crashes leave either no entry
or a whole one; every array's size and CRC-32 are checked on read, and an
entry that fails a check is rebuilt, never trusted.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import mmap
import os
import tempfile
import time
import zlib
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from wn_jax.data import cifar10, folder, sources, zca

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
      _, paths, _ = folder.list_split(root, split)
      fingerprint[f"files:{split}"] = _file_stats(paths, root)
  elif source in cifar10.CIFAR10_SOURCES:
    path = os.path.abspath(data_config.folder) if data_config.folder else ""
    names = cifar10.CIFAR10_SPLIT_FILES[source]
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
    raise ValueError(f"Unknown data source {source!r}; valid sources: {sources.VALID_SOURCES}.")
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
  folder.warn_if_lossy_and_whitened(data_config)
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
      dataset = sources.Dataset(**{name: stored[name] for name in _IMAGE_ARRAYS[:-1]},
                        class_names=[str(name) for name in stored["class_names"]])
      cache = "images"
  if dataset is None:
    dataset = sources.load_dataset(data_config)
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
  train_x, test_x = zca.whiten_dataset(dataset, regularization)
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
