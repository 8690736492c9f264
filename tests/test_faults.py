"""A run never silently loses its work: non-finite loss, SIGKILL, bad workdirs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO_ROOT, tiny_config

from wn_jax import train


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _restore(workdir, step):
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "default")
  return ocp.StandardCheckpointer().restore(path)


def test_huge_learning_rate_stops_with_a_clear_message(image_folder, tmp_path):
  config = tiny_config(image_folder, "normal")
  config.optimizer.learning_rate = 1e12
  with pytest.raises(train.NonFiniteLossError,
                     match=r"Non-finite training loss .* at step \d+\. Stopped; the last "
                           r"good checkpoint is none \(no epoch finished\)"):
    train.train_and_evaluate(config, str(tmp_path))


def test_non_finite_loss_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
  real_step = train.train_step

  def step_that_diverges_at_step_8(state, *args, **kwargs):
    new_state, metrics = real_step(state, *args, **kwargs)
    bad = state.step >= 8
    metrics["loss"] = jnp.where(bad, jnp.nan, metrics["loss"])
    new_state = new_state.replace(params=jax.tree.map(
        lambda p: jnp.where(bad, jnp.nan, p), new_state.params))
    return new_state, metrics

  monkeypatch.setattr(train, "train_step", step_that_diverges_at_step_8)
  config = tiny_config(image_folder, "wn")
  config.num_epochs = 3
  config.optimizer.anneal_start_epoch = 2
  with pytest.raises(train.NonFiniteLossError,
                     match=r"at step 8\. Stopped; the last good checkpoint is step 6 in"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _checkpoint_steps(tmp_path) == [6]
  restored = _restore(tmp_path, 6)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored))
  # Resuming (without the fault) continues from that checkpoint.
  monkeypatch.setattr(train, "train_step", real_step)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 18


def _cli(image_folder, workdir, num_epochs):
  return [
      sys.executable, os.path.join(REPO_ROOT, "train.py"),
      "--config", os.path.join(REPO_ROOT, "configs/cifar.py") + ":wn_mobn",
      "--workdir", str(workdir), "--config.data.source=folder",
      f"--config.data.folder={image_folder}", "--config.model.width=4",
      f"--config.num_epochs={num_epochs}", "--config.optimizer.anneal_start_epoch=2",
      "--config.batch_size=10", "--config.init_batch_size=20",
      "--config.eval_batch_size=8", "--config.log_every_steps=3"]


def _kill_when(command, predicate, timeout=300):
  """Starts `command`, SIGKILLs it as soon as `predicate()` holds (polled)."""
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if predicate():
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.002)
  proc.wait()
  return proc.returncode


def test_sigkill_at_any_moment_resumes_from_the_newest_complete_checkpoint(
    image_folder, tmp_path):
  num_epochs = 5
  reference = tmp_path / "reference"
  subprocess.run(_cli(image_folder, reference, num_epochs), check=True,
                 capture_output=True, timeout=300)

  workdir = tmp_path / "killed"
  ckpt_dir = workdir / "checkpoints"

  def listing():
    return os.listdir(ckpt_dir) if ckpt_dir.exists() else []

  # 1. Killed while a checkpoint is being written (orbax's temporary folder
  #    exists), 2. killed between checkpoints, mid-epoch.
  writing = lambda: any("tmp" in name for name in listing())
  mid_epoch = lambda: "12" in listing()
  codes = [_kill_when(_cli(image_folder, workdir, num_epochs), writing),
           _kill_when(_cli(image_folder, workdir, num_epochs), mid_epoch)]
  assert codes == [-signal.SIGKILL, -signal.SIGKILL]
  # A half-written checkpoint from a crash is left as orbax's temporary
  # folder; plant one explicitly so this case is always exercised.
  stale = ckpt_dir / "24.orbax-checkpoint-tmp-1"
  stale.mkdir(parents=True, exist_ok=True)
  (stale / "garbage").write_text("partial write")

  result = subprocess.run(_cli(image_folder, workdir, num_epochs), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from the checkpoint at step" in result.stderr
  final = _restore(workdir, 30)
  expected = _restore(reference, 30)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(final)):
    np.testing.assert_array_equal(a, b)
  with open(workdir / "metrics.jsonl") as f:
    epochs = [json.loads(line)["epoch"] for line in f if "test_error" in line]
  assert epochs == [1, 2, 3, 4, 5]


def test_unwritable_workdir_fails_before_training(image_folder, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="is not writable.*another --workdir"):
    train.train_and_evaluate(tiny_config(image_folder), str(blocker / "workdir"))


def test_full_disk_fails_before_training(image_folder, tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(train.shutil, "disk_usage",
                      lambda path: usage._replace(free=1024))
  with pytest.raises(OSError, match="MiB free under .* free disk space"):
    train.train_and_evaluate(tiny_config(image_folder), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
