"""The tests' persistent XLA cache stays bounded (tests/conftest.py)."""

import os

from conftest import prune_xla_cache


def _entry(directory, name, size, age_seconds, now):
  path = os.path.join(directory, name)
  with open(path, "wb") as f:
    f.write(b"x" * size)
  os.utime(path, (now - age_seconds, now - age_seconds))
  return path


def test_prune_deletes_the_least_recently_used_entries_down_to_the_bound(tmp_path):
  now = 1_700_000_000
  oldest = _entry(tmp_path, "a-cache", 400, age_seconds=300, now=now)
  older = _entry(tmp_path, "b-cache", 400, age_seconds=200, now=now)
  newer = _entry(tmp_path, "c-cache", 400, age_seconds=100, now=now)
  newest = _entry(tmp_path, "d-cache", 400, age_seconds=0, now=now)
  not_an_entry = _entry(tmp_path, ".lockfile", 10_000, age_seconds=900, now=now)

  deleted = prune_xla_cache(str(tmp_path), max_bytes=900)

  assert deleted == [oldest, older]
  assert sorted(os.listdir(tmp_path)) == [".lockfile", "c-cache", "d-cache"]
  assert os.path.exists(newer) and os.path.exists(newest) and os.path.exists(not_an_entry)


def test_prune_keeps_a_cache_within_its_bound(tmp_path):
  now = 1_700_000_000
  for i in range(3):
    _entry(tmp_path, f"{i}-cache", 100, age_seconds=i, now=now)
  assert prune_xla_cache(str(tmp_path), max_bytes=300) == []
  assert len(os.listdir(tmp_path)) == 3
