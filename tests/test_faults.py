"""A run never silently loses its work: non-finite loss, SIGKILL, bad workdirs."""

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

from configs import cifar
from wn_jax.data import sources
from wn_jax.trainer import record_files, records, steps, train


def _loader_that_must_not_run(config):
  raise AssertionError("the data was loaded before the bad input was reported")


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _restore(workdir, step):
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "default")
  return ocp.StandardCheckpointer().restore(path)


@pytest.mark.slow  # fault: a whole training run
def test_huge_learning_rate_stops_with_a_clear_message(image_folder, tmp_path):
  config = tiny_config(image_folder, "normal")
  config.optimizer.learning_rate = 1e12
  with pytest.raises(train.NonFiniteLossError,
                     match=r"Non-finite training loss .* at step \d+\. Stopped; the last "
                           r"good checkpoint is none \(no epoch finished\)"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow  # fault: two training runs
def test_non_finite_loss_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
  real_step = steps.train_step

  def step_that_diverges_at_step_8(state, *args, **kwargs):
    new_state, metrics = real_step(state, *args, **kwargs)
    bad = state.step >= 8
    metrics["loss"] = jnp.where(bad, jnp.nan, metrics["loss"])
    new_state = new_state.replace(params=jax.tree.map(
        lambda p: jnp.where(bad, jnp.nan, p), new_state.params))
    return new_state, metrics

  monkeypatch.setattr(steps, "train_step", step_that_diverges_at_step_8)
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
  monkeypatch.setattr(steps, "train_step", real_step)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 18


# 3 epochs of 6 steps; a norms record every step, so metrics.jsonl shows
# how far a run got (log_norms_every_steps does not change what is computed).
_CLI_OVERRIDES = {
    "data.source": "folder", "model.width": 4, "num_epochs": 3,
    "optimizer.anneal_start_epoch": 2, "batch_size": 10, "init_batch_size": 20,
    "eval_batch_size": 8, "log_every_steps": 3, "log_norms_every_steps": 1}


def _cli(image_folder, workdir):
  return [
      sys.executable, os.path.join(REPO_ROOT, "train.py"),
      "--config", os.path.join(REPO_ROOT, "configs/cifar.py") + ":wn_mobn",
      "--workdir", str(workdir), f"--config.data.folder={image_folder}",
      *(f"--config.{k}={v}" for k, v in _CLI_OVERRIDES.items())]


def _cli_config(image_folder):
  """The config `_cli` builds, for the uninterrupted run in this process."""
  config = cifar.get_config("wn_mobn")
  config.data.folder = image_folder
  for key, value in _CLI_OVERRIDES.items():
    section, _, name = key.rpartition(".")
    setattr(config[section] if section else config, name, value)
  return config


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


def _steps_logged(workdir):
  """Steps of the complete records in workdir/metrics.jsonl (polled while the
  run writes it)."""
  try:
    return [r["step"] for r in record_files.read_records(str(workdir))]
  except FileNotFoundError:
    return []


def _records(workdir):
  """metrics.jsonl without the timings, which differ from run to run."""
  return record_files.read_records(str(workdir), without_timings=True)


@pytest.mark.slow  # kill: CLI runs
def test_sigkill_at_any_moment_resumes_from_the_newest_complete_checkpoint(
    image_folder, tmp_path):
  reference = tmp_path / "reference"
  train.train_and_evaluate(_cli_config(image_folder), str(reference))

  workdir = tmp_path / "killed"
  ckpt_dir = workdir / "checkpoints"

  def listing():
    return os.listdir(ckpt_dir) if ckpt_dir.exists() else []

  # 1. Killed while a checkpoint is being written (orbax's temporary folder
  #    exists), 2. killed mid-epoch: step 9 of 6..12 has run, with the step-6
  #    checkpoint complete and nothing of step 9 saved.
  writing = lambda: any("tmp" in name for name in listing())
  mid_epoch = lambda: 9 in _steps_logged(workdir)
  codes = [_kill_when(_cli(image_folder, workdir), writing),
           _kill_when(_cli(image_folder, workdir), mid_epoch)]
  assert codes == [-signal.SIGKILL, -signal.SIGKILL]
  assert _checkpoint_steps(workdir) == [6]
  assert max(_steps_logged(workdir)) >= 9
  # A half-written checkpoint from a crash is left as orbax's temporary
  # folder; plant one explicitly so this case is always exercised.
  stale = ckpt_dir / "12.orbax-checkpoint-tmp-1"
  stale.mkdir(parents=True, exist_ok=True)
  (stale / "garbage").write_text("partial write")

  result = subprocess.run(_cli(image_folder, workdir), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from the checkpoint at step 6" in result.stderr
  final = _restore(workdir, 18)
  expected = _restore(reference, 18)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(final)):
    np.testing.assert_array_equal(a, b)
  # The same records: each step once, none of the killed runs' left over.
  assert _records(workdir) == _records(reference)


def _write_metrics(workdir, steps, tail=""):
  text = "".join(f'{{"step": {step}, "train_loss": {step / 10}}}\n' for step in steps) + tail
  (workdir / record_files.METRICS_FILE).write_text(text)
  return text


def test_a_resume_drops_the_line_a_kill_cut_short(tmp_path):
  _write_metrics(tmp_path, [1, 2, 3], tail='{"step": 4, "train_lo')
  assert [r["step"] for r in record_files.read_records(str(tmp_path))] == [1, 2, 3]
  records._MetricsLog(str(tmp_path), resume_step=3).write(4, {"train_loss": 0.4})
  assert [r["step"] for r in record_files.read_records(str(tmp_path))] == [1, 2, 3, 4]


def test_a_resume_replaces_the_records_whole_never_in_place(tmp_path):
  # A reader of the live file (a figure, a poll) keeps reading the old
  # records to their end; an in-place rewrite hands it the new file's bytes
  # at the old offset, half a line.
  before = _write_metrics(tmp_path, range(1, 40))
  with open(tmp_path / record_files.METRICS_FILE, "rb", buffering=0) as reader:
    head = reader.read(100)
    records._MetricsLog(str(tmp_path), resume_step=20)
    assert (head + reader.read()).decode() == before
  assert [r["step"] for r in record_files.read_records(str(tmp_path))] == list(range(1, 21))
  assert os.listdir(tmp_path) == [record_files.METRICS_FILE]


def test_unwritable_workdir_fails_before_training(image_folder, tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  monkeypatch.setattr(sources, "load_dataset", _loader_that_must_not_run)
  with pytest.raises(OSError, match="is not writable.*another --workdir"):
    train.train_and_evaluate(tiny_config(image_folder), str(blocker / "workdir"))


def test_full_disk_fails_before_training(image_folder, tmp_path, monkeypatch,
                                        model_compilations):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(records.shutil, "disk_usage",
                      lambda path: usage._replace(free=1024))
  with pytest.raises(OSError, match="MiB free under .* free disk space"):
    train.train_and_evaluate(tiny_config(image_folder), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  assert not model_compilations
