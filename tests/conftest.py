"""Shared fixtures: a tiny generated image-folder data set and a tiny config.

Also a persistent XLA compilation cache: many tests, and the subprocesses
they start, compile the same tiny models, and the compiles dominate the
fast tier's time on a CPU. The cache lives in the user's cache folder
(`$XDG_CACHE_HOME/wn_jax/test-xla-cache`), so the next run of the suite
recompiles only what a change touched; `WN_JAX_TEST_XLA_CACHE=<dir>` puts
it elsewhere, `=fresh` uses a temporary folder removed at exit (a cold
run). A hit loads the executable an earlier compile of the same program
produced (the key holds the program, the compile options, jax's and XLA's
versions and the devices), so results are unchanged.

The cache is bounded once per test session, at its end: the least recently
used entries go until it holds at most `XLA_CACHE_MAX_BYTES`. jax's own
bound (`jax_compilation_cache_max_size`) is left off: it scans every entry
on every write, which made a cold run of the suite, ~6,000 entries, about
40% slower on the 2-core CPU.
"""

import atexit
import gzip
import os
import shutil
import struct
import sys
import tempfile

XLA_CACHE_MAX_BYTES = 1 << 30
_CACHE_SUFFIX = "-cache"  # jax's name for an entry: <key>-cache


def _xla_cache_dir() -> str:
  chosen = os.environ.get("WN_JAX_TEST_XLA_CACHE", "")
  if chosen == "fresh":
    directory = tempfile.mkdtemp(prefix="wn_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory
  if chosen:
    return chosen
  user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(user_cache, "wn_jax", "test-xla-cache")


def prune_xla_cache(directory: str, max_bytes: int) -> list[str]:
  """Deletes the least recently used entries until at most `max_bytes` remain.

  Recency is the later of an entry's access and modification times, as the
  file system records them. Returns the deleted paths.
  """
  entries = []
  with os.scandir(directory) as scan:
    for entry in scan:
      if not entry.name.endswith(_CACHE_SUFFIX):
        continue
      try:
        stat = entry.stat()
      except FileNotFoundError:  # another test process pruned it
        continue
      entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, entry.path))
  total = sum(size for _, size, _ in entries)
  deleted = []
  for _, size, path in sorted(entries):
    if total <= max_bytes:
      break
    try:
      os.remove(path)
    except FileNotFoundError:  # another test process pruned it first
      pass
    total -= size
    deleted.append(path)
  return deleted


_XLA_CACHE_DIR = _xla_cache_dir()
# Before jax is imported anywhere; subprocesses inherit the environment.
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # for `configs`

from configs import cifar  # noqa: E402

CLASSES = ("ant", "bee", "cat")
IMAGE_SIZE = 12  # 12 -> pool 6 -> pool 3 -> VALID 3x3 -> 1: the CIFAR net's shape.


def make_image_folder(root, num_train_per_class=20, num_test_per_class=4, seed=0,
                      unclipped=False):
  """Writes root/{train,test}/<class>/<i>.png with class-dependent colours.

  With `unclipped`, pixel values stay inside (0, 255): no two pixels are
  tied by clipping, so max-pool ties (whose winner depends on rounding) are
  rare, as in real photos; the multi-device equality tests need this.
  """
  rng = np.random.default_rng(seed)
  low, high, noise = (60, 180, 15) if unclipped else (0, 200, 40)
  for split, count in (("train", num_train_per_class), ("test", num_test_per_class)):
    for label, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for i in range(count):
        base = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), float(low))
        base[..., label] = high
        pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}.png"))
  return str(root)


def random_originals(num_per_class=40, num_classes=3, size=4, seed=0):
  """uint8 [N, size, size, 3] random images and labels in class blocks."""
  rng = np.random.default_rng(seed)
  images = rng.integers(20, 236, size=(num_per_class * num_classes, size, size, 3),
                        dtype=np.uint8)
  labels = np.repeat(np.arange(num_classes), num_per_class).astype(np.int32)
  return images, labels


def perturbed(images, amplitude=3, seed=1):
  rng = np.random.default_rng(seed)
  noise = rng.integers(-amplitude, amplitude + 1, size=images.shape)
  return np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if os.environ.get("PYTEST_XDIST_WORKER"):  # with -n, the main process prunes
    return
  if os.path.isdir(_XLA_CACHE_DIR):
    prune_xla_cache(_XLA_CACHE_DIR, XLA_CACHE_MAX_BYTES)


@pytest.fixture(autouse=True)
def data_cache_dir(tmp_path_factory, monkeypatch):
  """Every test gets its own empty data cache (never the user's ~/.cache):
  WN_JAX_CACHE_DIR is set for the test and the subprocesses it starts."""
  cache_dir = str(tmp_path_factory.mktemp("wn_jax_cache"))
  monkeypatch.setenv("WN_JAX_CACHE_DIR", cache_dir)
  return cache_dir


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp("data") / "images")


def tiny_config(data_folder, variant="wn"):
  """The CIFAR config shrunk to seconds: width 4, 2 epochs of 6 steps."""
  config = cifar.get_config(variant)
  config.data.source = "folder"
  config.data.folder = data_folder
  config.model.width = 4
  config.num_epochs = 2
  config.optimizer.anneal_start_epoch = 1
  config.batch_size = 10
  config.init_batch_size = 20
  config.eval_batch_size = 8
  config.log_every_steps = 2
  config.log_norms_every_steps = 3
  return config


# jax records every XLA compilation under this event name (jax/_src/dispatch.py).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Functions that compile the model; none may compile before a bad input fails.
MODEL_FUNCTIONS = ("sweep_init", "sweep_train_step", "sweep_eval_step")


@pytest.fixture
def model_compilations():
  """The names of the jitted model functions XLA compiles during the test.

  Eager jnp/random ops compile tiny computations too; only compilations of
  the functions that trace the model (`MODEL_FUNCTIONS`) are recorded.
  """
  import jax.monitoring

  compiled = []

  def listener(event, duration_secs, **kwargs):
    del duration_secs
    name = str(kwargs.get("fun_name", ""))
    if event == BACKEND_COMPILE_EVENT and any(f in name for f in MODEL_FUNCTIONS):
      compiled.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield compiled
  jax.monitoring.unregister_event_duration_listener(listener)


# Tiny MNIST IDX files (the VAE's and DRAW's runs through the loop).


def write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", n) for n in array.shape)
  with open(path, "wb") as f:
    f.write(gzip.compress(header + array.tobytes()))


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
  """8x8 'digits': a bright square whose place depends on the label."""
  folder = tmp_path_factory.mktemp("mnist")
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 60), ("t10k", 20)):
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 8, 8))
    for i, label in enumerate(labels):
      r, c = divmod(int(label) % 4, 2)
      images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 230
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return str(folder)


def read_records(workdir):
  """A run's metrics.jsonl records without the timing fields (which differ
  between otherwise identical runs)."""
  from wn_jax.trainer import record_files
  return record_files.read_records(str(workdir), without_timings=True)
