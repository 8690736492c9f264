"""Config checks: every bad value fails here, before any data or compile.

`validate_config` checks one config; `check_resumable_config` refuses to
resume a workdir whose checkpoints come from another config
(`RESUMABLE_KEYS` may differ). Checks only: nothing is built or loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from wn_jax import parameterizations
from wn_jax.tasks import get_task
from wn_jax.trainer import steps, sweep

# Config keys that may change between a run and its resumption: they do not
# change what is computed.
RESUMABLE_KEYS = ("log_every_steps", "log_norms_every_steps", "checkpoint_every_epochs",
                  "keep_checkpoints", "eval_batch_size", "distributed.enabled",
                  "distributed.coordinator_address", "distributed.num_processes",
                  "distributed.process_id", "sweep.member_loop",
                  "model.conv_weight_grad", "data.folder", "data.tfds_data_dir",
                  "data.cache_dir", "eval_every_epochs", "model.api")
# Keys added after runs were recorded without them, with the value those runs
# had: a checkpoint written before a key existed resumes under its default.
ADDED_KEYS = {"task": "classification", "ema_epochs": 0.0, "pictures_every_epochs": 0,
              "eval_every_steps": 0, "eval_subset": 0, "shuffle_train": True,
              "env.suite": "gymnax", "dqn.life_loss_terminal": False,
              "dqn.test_env_steps": 0, "model.normal_weights": "scaled"}
# float32 convs and matmuls: 'default' lets the backend choose (TF32 on
# NVIDIA Ampere/Hopper GPUs), 'highest' computes in full float32.
MATMUL_PRECISIONS = ("default", "high", "highest")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the key and what to do for a bad config."""
  def positive(key, value):
    if not value > 0:
      raise ValueError(f"config.{key} must be positive, got {value!r}.")

  task = get_task(config.task)
  parameterizations.check_parameterization(config.model.parameterization)
  parameterizations.check_init_order(config.model.init_order)
  if "normal_weights" in config.model:
    parameterizations.check_normal_weights(config.model.normal_weights)
  positive("optimizer.learning_rate", config.optimizer.learning_rate)
  positive("batch_size", config.batch_size)
  positive("num_epochs", config.num_epochs)
  positive("eval_batch_size", config.eval_batch_size)
  positive("checkpoint_every_epochs", config.checkpoint_every_epochs)
  positive("eval_every_epochs", config.eval_every_epochs)
  positive("keep_checkpoints", config.keep_checkpoints)
  positive("log_every_steps", config.log_every_steps)
  if config.log_norms_every_steps < 0:
    raise ValueError("config.log_norms_every_steps must be >= 0 (0 = off).")
  sweep.member_configs(config)  # Checks the sweep lists.
  if config.batch_size % num_devices:
    raise ValueError(
        f"config.batch_size={config.batch_size} is not divisible by the "
        f"{num_devices} devices; use a multiple of {num_devices}.")
  if config.init_batch_size < 2:
    raise ValueError(
        f"config.init_batch_size={config.init_batch_size}: the data-dependent "
        "init needs at least 2 examples to compute a standard deviation.")
  if not 0 <= config.ema_decay < 1:
    raise ValueError(f"config.ema_decay must lie in [0, 1) (0 = off), got "
                     f"{config.ema_decay!r}.")
  if config.ema_epochs < 0:
    raise ValueError(f"config.ema_epochs must be >= 0 (0 = off), got {config.ema_epochs!r}.")
  if config.ema_epochs > 0 and config.ema_decay > 0:
    raise ValueError("Set one of config.ema_decay (per step) and config.ema_epochs (a "
                     "horizon in epochs), not both.")
  if config.eval_every_steps < 0 or config.eval_subset < 0:
    raise ValueError("config.eval_every_steps and config.eval_subset must be >= 0 (0 = off / "
                     "the whole test set).")
  if config.pictures_every_epochs < 0:
    raise ValueError("config.pictures_every_epochs must be >= 0 (0 = never).")
  task.validate_config(config)
  if config.sweep.member_loop not in steps.MEMBER_LOOPS:
    raise ValueError(f"config.sweep.member_loop must be one of {steps.MEMBER_LOOPS}, got "
                     f"{config.sweep.member_loop!r}.")
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f"config.matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                     f"{config.matmul_precision!r}.")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def check_resumable_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints come from another config.

  A longer `num_epochs` is accepted where the task says its training does
  not depend on the run's length (`TRAINING_INDEPENDENT_OF_NUM_EPOCHS`, see
  `wn_jax.tasks`: a constant learning rate, schedules over steps, never
  over the run's end), so a finished run goes on to more epochs on the same
  trajectory; elsewhere (the classifier anneals to 0 at the last epoch) and
  for a shorter run, the refusal says why.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = flatten_config(json.load(f))
  current = flatten_config(json.loads(config.to_json()))
  # A key added since the workdir was written had the value it now defaults to.
  saved = {**{k: v for k, v in ADDED_KEYS.items() if k in current}, **saved}
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  why = ""
  if "num_epochs" in differing and current.get("task") == saved.get("task"):
    length_free = getattr(get_task(config.task), "TRAINING_INDEPENDENT_OF_NUM_EPOCHS", False)
    if not length_free:
      why = (f" The {config.task} task's training depends on num_epochs (its schedule "
             "runs to the last epoch), so a run of another length is another run.")
    elif current["num_epochs"] < saved["num_epochs"]:
      why = " A run is lengthened on resume, never shortened."
    else:
      differing.remove("num_epochs")
  if differing:
    details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
                        for k in differing)
    raise ValueError(
        f"Workdir {workdir} holds checkpoints of a different config ({details}).{why} "
        "Refusing to resume: use a new --workdir, or the saved config.")
