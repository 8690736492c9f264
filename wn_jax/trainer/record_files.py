"""A run's record folder, read: the one parser of `metrics.jsonl`.

`records.Records` writes, per run (or sweep member), `config.json` (the
effective config) and `metrics.jsonl` (one JSON object per line: a step's
training, evaluation, norm or final measurements). Every reader (the
figures, `experiments`, the tests) goes through `read_config` and
`read_records` here. No JAX: the study tools import this cheaply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Fields that differ between otherwise identical runs (wall-clock timings).
TIMING_FIELDS = ("epoch_time_s", "images_per_s")


def _path(workdir: str, name: str) -> str:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir (a run's "
                            "record folder, or a sweep member's)?")
  return path


def read_config(workdir: str) -> dict:
  """The run's effective config, as a dict."""
  with open(_path(workdir, CONFIG_FILE)) as f:
    return json.load(f)


def complete_lines(text: str) -> list[str]:
  """The lines of `text` that end in a newline, blank ones skipped.

  `Records` writes a record and its newline in one call, so a last line
  without its newline is a write still under way (a live run) or cut short
  (a killed one): it is not a record yet.
  """
  return [line for line in text.splitlines(keepends=True)
          if line.endswith("\n") and line.strip()]


def parse_records(lines: Iterable[str], without_timings: bool = False) -> list[dict]:
  """The records of `metrics.jsonl` lines, in order (blank lines skipped);
  `without_timings` drops `TIMING_FIELDS`."""
  records = [json.loads(line) for line in lines if line.strip()]
  if without_timings:
    records = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]
  return records


def read_records(workdir: str, without_timings: bool = False) -> list[dict]:
  """Every complete record of the run's `metrics.jsonl`, in order."""
  with open(_path(workdir, METRICS_FILE)) as f:
    return parse_records(complete_lines(f.read()), without_timings)


def read_run(workdir: str, key: str) -> tuple[dict, list[dict]]:
  """(config, records) of a run, ValueError if no record holds `key` yet
  (the run has not evaluated an epoch)."""
  config, records = read_config(workdir), read_records(workdir)
  if not any(key in r for r in records):
    raise ValueError(f"{os.path.join(workdir, METRICS_FILE)} holds no {key!r} yet: no "
                     "evaluated epoch.")
  return config, records
