"""The workdir: its checks, checkpoints, and the members' records.

`check_workdir` fails early on an unwritable workdir or a full disk;
`init_or_restore` resumes from the newest orbax checkpoint or runs the
data-dependent init; `Records` writes each member's config.json,
metrics.jsonl and TensorBoard events (process 0 only), and tracks which
members a non-finite loss stopped. Nothing here computes a step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from PIL import Image

from wn_jax.trainer import sweep
from wn_jax.trainer.placement import fetch
from wn_jax.trainer.program import Members, Program
from wn_jax.trainer.record_files import METRICS_FILE, complete_lines, parse_records, read_records
from wn_jax.trainer.steps import TrainState

CHECKPOINT_HEADROOM_FACTOR = 4  # free disk needed, in checkpoint sizes
ANIMATION_FRAME_MS = 100  # one frame of an animated picture (GIF)


def check_workdir(workdir: str, needed_bytes: int) -> None:
  """Clear errors for an unwritable workdir or a full disk, before training."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"Workdir {workdir!r} is not writable: {e}. Choose another "
                  "--workdir.") from e
  free = shutil.disk_usage(workdir).free
  if free < needed_bytes:
    raise OSError(
        f"Only {free / 2**20:.0f} MiB free under {workdir!r}, but checkpoints "
        f"need about {needed_bytes / 2**20:.0f} MiB; free disk space or choose "
        "another --workdir.")


def _create_summary_writer(workdir: str):
  """clu's TensorBoard + logging writer, or None where TensorFlow is missing.

  clu imports TensorFlow; accelerator images often have only JAX, and the
  run must still work there (metrics.jsonl always has everything).
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning("No TensorBoard events (%s); metrics go to metrics.jsonl.", e)
    return None
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)


def _replace_file(path: str, text: str) -> None:
  """Writes `text` to `path` atomically: a kill leaves the old file or the new
  one, never a truncated one, and a reader that has the old file open reads
  it to its end."""
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


class _MetricsLog:
  """Appends one JSON object per line to workdir/metrics.jsonl."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, METRICS_FILE)
    # Drop records past the restored checkpoint, and a last line a kill cut
    # short (process 0 alone writes the file; another host rewriting it could
    # drop process 0's new records).
    if jax.process_index() == 0 and os.path.exists(self.path):
      with open(self.path) as f:
        text = f.read()
      lines = complete_lines(text)
      kept = [line for line, record in zip(lines, parse_records(lines))
              if record["step"] <= resume_step]
      if "".join(kept) != text:
        _replace_file(self.path, "".join(kept))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      record = {k: v if isinstance(v, (int, str)) else float(v)
                for k, v in metrics.items()}
      f.write(json.dumps({"step": step, **record}) + "\n")


class _MemberRecords:
  """One member's record folder: config.json, metrics.jsonl, TensorBoard."""

  def __init__(self, directory: str, config: ml_collections.ConfigDict,
               resume_step: int | None):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    self.writer = _create_summary_writer(directory)
    # A fresh start drops every record of an earlier attempt that died before
    # its first checkpoint; a resume keeps those up to the restored step.
    self.metrics = _MetricsLog(directory, resume_step if resume_step is not None else -1)

  def write(self, step: int, record: Mapping[str, Any], scalars: bool = False) -> None:
    self.metrics.write(step, record)
    if scalars and self.writer is not None:
      self.writer.write_scalars(step, record)

  def has_final(self, step: int) -> bool:
    """Whether metrics.jsonl holds the final measurements of `step`."""
    if not os.path.exists(self.metrics.path):
      return False
    return any("final" in record and record["step"] == step
               for record in read_records(os.path.dirname(self.metrics.path)))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """uint8 images [H, W, C] into TensorBoard and `pictures/<name>.png`, and
    animations [frames, H, W, C] into TensorBoard (the frames as a batch)
    and `pictures/<name>.gif` (the newest of each name; process 0 only)."""
    if not images or jax.process_index() != 0:
      return
    for name, image in images.items():
      if image.ndim not in (3, 4):
        raise ValueError(f"Picture {name!r} must be [H, W, C] or [frames, H, W, C], got "
                         f"shape {image.shape}.")
    if self.writer is not None:
      self.writer.write_images(step, {name: image if image.ndim == 4 else image[None]
                                      for name, image in images.items()})
    folder = os.path.join(self.directory, "pictures")
    os.makedirs(folder, exist_ok=True)
    for name, image in images.items():
      frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f)
                for f in (image if image.ndim == 4 else image[None])]
      if image.ndim == 3:
        frames[0].save(os.path.join(folder, f"{name}.png"))
      else:
        frames[0].save(os.path.join(folder, f"{name}.gif"), save_all=True,
                       append_images=frames[1:], duration=ANIMATION_FRAME_MS, loop=0)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()


def init_or_restore(config: ml_collections.ConfigDict, workdir: str, program: Program
                    ) -> tuple[TrainState, ocp.CheckpointManager, int | None]:
  """The newest checkpoint in `workdir`, else the data-dependent init.

  Returns (state, checkpoint manager, restored step or None).
  """
  abstract_state = jax.eval_shape(program.init_fn, *program.init_args)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  check_workdir(workdir, CHECKPOINT_HEADROOM_FACTOR * state_bytes)
  checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True))
  latest = checkpoints.latest_step()
  if latest is not None:
    per_member = program.sharding("members")
    state = checkpoints.restore(latest, args=ocp.args.StandardRestore(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=per_member),
                     abstract_state)))
    logging.info("Resumed from the checkpoint at step %d in %s.", latest, workdir)
  else:
    start = time.perf_counter()
    state = jax.block_until_ready(program.init_fn(*program.init_args))
    logging.info("Init of %d member(s) (the task's init_variables, given an init batch "
                 "of %d examples): %.1f s (with compile).", len(program.members.configs),
                 config.init_batch_size, time.perf_counter() - start)
  return state, checkpoints, latest


class Records:
  """The members' records, and which members a non-finite loss stopped."""

  def __init__(self, config, workdir, members: Members, state: TrainState,
               latest: int | None):
    if sweep.is_sweep(config) and jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    # A plain run's one member records into the workdir itself.
    self.members = [_MemberRecords(d, c, latest)
                    for d, c in zip(members.record_dirs, members.configs)]
    self.names = [os.path.basename(d) for d in members.record_dirs]
    # index -> (step, loss) of members stopped by a non-finite loss.
    self.nonfinite = {k: (int(s), float("nan"))
                      for k, s in enumerate(fetch(state.nonfinite_step)) if s >= 0}

  def active(self):
    return [(k, r) for k, r in enumerate(self.members) if k not in self.nonfinite]

  def write_norms(self, step: int, norms: Mapping[str, np.ndarray]) -> None:
    for k, record in self.active():
      record.write(step, {name: value[k] for name, value in norms.items()})

  def add_window(self, window, stopped_at: np.ndarray, sums) -> None:
    """Adds fetched (step, metrics [M]) pairs to the epoch's `sums`; a member's
    first non-finite step is recorded and ends its sums."""
    for step, metrics in window:
      for k in range(len(self.members)):
        if stopped_at[k] < 0 or step < stopped_at[k]:
          for name in sums:
            sums[name][k] += 1 if name == "count" else metrics[name][k]
        elif step == stopped_at[k] and k not in self.nonfinite:
          self.nonfinite[k] = (step, float(metrics["loss"][k]))
          message = (f"non-finite training loss {metrics['loss'][k]} at step {step}; "
                     "parameters frozen from this step on")
          logging.warning("Member %s: %s.", self.names[k], message)
          if len(self.members) > 1:
            self.members[k].write(step, {"nonfinite_loss": float(metrics["loss"][k]),
                                         "stopped": message})

  def close(self) -> None:
    for record in self.members:
      record.close()
    if len(self.members) > 1:
      stopped = ", ".join(f"{self.names[k]} (step {s})"
                          for k, (s, _) in sorted(self.nonfinite.items()))
      logging.info("Finished %d members: %d trained to the end%s.", len(self.members),
                   len(self.members) - len(self.nonfinite),
                   f"; stopped by a non-finite loss: {stopped}" if stopped else "")
