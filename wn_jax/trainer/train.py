"""Training and evaluation: `train_and_evaluate(config, workdir)`, the loop.

One program trains one or many runs ("members", `wn_jax.trainer.sweep`): every
array of the `TrainState` has a leading member axis, and the train step,
the data-dependent init and the evaluation are `jax.vmap`s (or unrolled
copies) of the one-member functions, jitted once (`steps`, `program`). A
plain run is the one-member case. Devices and hosts: `placement`.

Reproducibility: each member's root key is `jax.random.key(seed)`; the
step's noise, dropout and augmentation keys are `fold_in(step_key, step)`,
and epoch `e` visits the training set in the order `epoch_permutation(seed,
e)`, so a run resumed from a checkpoint is identical to an uninterrupted
one, and a member of a sweep is the run trained alone with its values.

This module only sequences the stages (check, place, build, init or
restore, epochs, evaluation, records, checkpoints); each stage lives in
its own module.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from wn_jax.tasks import get_task
from wn_jax.trainer import sweep
from wn_jax.trainer.config_checks import check_resumable_config, validate_config
from wn_jax.trainer.placement import create_mesh, fetch, initialize_distributed, put_global
from wn_jax.trainer.program import (
  Program,
  build_program,
  load_data,
  member_epoch_rows,
  sweep_members,
)
from wn_jax.trainer.records import Records, check_workdir, init_or_restore
from wn_jax.trainer.steps import TrainState


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss of every member becomes NaN or inf."""


def _evaluate_params(program: Program, state: TrainState, prefix: str, eval_batches
                     ) -> list[dict[str, float]]:
  sums = None
  for rows, mask in eval_batches:
    out = program.eval_fn(state, program.data.test, rows, mask, program.eval_keys)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = fetch(sums)
  return [{f"{prefix}_{name}": float(sums[name][k]) / float(sums["count"][k])
           for name in program.task.EVAL_METRICS}
          for k in range(len(program.members.configs))]


def evaluate(program: Program, state: TrainState, subset: bool = False
             ) -> list[dict[str, float]]:
  """The task's test metrics of every member (`test_<name>`); with a moving
  average of the parameters, also theirs (`ema_test_<name>`). `subset`: on
  the fixed test subset of `eval_every_steps` instead (`subset_test_<name>`,
  `ema_subset_test_<name>`)."""
  batches = program.subset_eval_batches if subset else program.eval_batches
  prefix = "subset_test" if subset else "test"
  results = _evaluate_params(program, state, prefix, batches)
  if state.ema_params is not None:
    averaged = _evaluate_params(program, state.replace(params=state.ema_params),
                                f"ema_{prefix}", batches)
    results = [{**raw, **avg} for raw, avg in zip(results, averaged)]
  return results


def train_epoch(config: ml_collections.ConfigDict, program: Program, state: TrainState,
                epoch: int, records: Records, stop_if_all_stopped: Callable[[], None]
                ) -> tuple[TrainState, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """One epoch of every member. Metrics leave the device only at log steps.

  Returns the state, the epoch's summed metrics (the task's TRAIN_METRICS
  and 'count', each [M]) and the last step's metrics.
  """
  num_members = len(program.members.configs)
  steps_per_epoch = program.steps_per_epoch
  num_steps = steps_per_epoch * config.num_epochs
  epoch_rows = put_global(
      member_epoch_rows(program.members, epoch, program.data.num_train,
                        config.batch_size, config.shuffle_train, steps_per_epoch),
      program.sharding("members", None, "data"))
  sums = {key: np.zeros(num_members) for key in (*program.task.TRAIN_METRICS, "count")}
  window, window_start = [], time.perf_counter()
  for i in range(steps_per_epoch):
    step = epoch * steps_per_epoch + i
    state, metrics = program.step_fn(state, program.data.train, epoch_rows,
                                     program.step_keys, program.learning_rates)
    window.append((step, metrics))
    if program.norms_fn and (step + 1) % config.log_norms_every_steps == 0:
      records.write_norms(step + 1, fetch(program.norms_fn(state.params)))
    if config.eval_every_steps > 0 and (step + 1) % config.eval_every_steps == 0:
      results = evaluate(program, state, subset=True)
      for k, record in records.active():
        record.write(step + 1, results[k], scalars=True)
    if (step + 1) % config.log_every_steps == 0 or i + 1 == steps_per_epoch:
      window = fetch(window)
      records.add_window(window, fetch(state.nonfinite_step), sums)
      stop_if_all_stopped()
      last = window[-1][1]
      elapsed = time.perf_counter() - window_start
      logging.info(
          "epoch %d step %d/%d loss %s lr %s %.0f examples/s per member (%d) ETA %s",
          epoch, step + 1, num_steps, " ".join(f"{x:.4f}" for x in last["loss"]),
          " ".join(f"{x:.2e}" for x in last["learning_rate"]),
          len(window) * config.batch_size / elapsed, num_members,
          time.strftime("%H:%M:%S", time.gmtime(
              (num_steps - step - 1) * elapsed / len(window))))
      window, window_start = [], time.perf_counter()
  return state, sums, last


def is_eval_epoch(epoch: int, eval_every_epochs: int, num_epochs: int) -> bool:
  """Whether the test set is evaluated after (1-based) `epoch`: every
  `eval_every_epochs`-th epoch, and always after the last."""
  return epoch % eval_every_epochs == 0 or epoch == num_epochs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates per `config`, checkpointing into `workdir`.

  Resumes from the newest checkpoint in `workdir` if there is one. Returns
  the final state: one member's for a plain run, the stacked state [M, ...]
  for a sweep (`config.sweep`).
  """
  initialize_distributed(config.distributed)  # Before anything asks for devices.
  logging.info("JAX %s, backend %s, process %d of %d, devices: %s", jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.devices())
  validate_config(config, jax.device_count())
  if config.matmul_precision == "default":
    return _train_and_evaluate(config, workdir)
  # Traced under this setting, every conv and matmul of the run uses it.
  with jax.default_matmul_precision(config.matmul_precision):
    return _train_and_evaluate(config, workdir)


def _member_variables(state: TrainState, k: int, params_name: str = "params"):
  """Member k's variables ({'params', ...collections}) from the stacked state."""
  member = jax.tree.map(lambda x: x[k], state)
  return {"params": getattr(member, params_name), **member.model_state}


def _member_eval_keys(program: Program) -> list[jax.Array]:
  """Each member's eval key, on the host (for the per-member task calls)."""
  return [jax.random.wrap_key_data(data) for data in fetch(jax.random.key_data(
      program.eval_keys))]


def write_pictures(program: Program, state: TrainState, records: Records, step: int) -> None:
  """The task's pictures of every active member (`task.pictures`), with the
  averaged parameters when there are any, into its records."""
  params_name = "params" if state.ema_params is None else "ema_params"
  keys = _member_eval_keys(program)
  for k, record in records.active():
    images = program.task.pictures(
        program.members.configs[k], program.model, _member_variables(state, k, params_name),
        program.data.test, keys[k])
    record.write_images(step, images)


def final_metrics(program: Program, state: TrainState, records: Records, step: int) -> None:
  """The task's once-per-run measurements (`task.final_metrics`) of every
  active member, raw and (prefixed 'ema_') with the averaged parameters;
  skipped where the records already hold them (a resumed, finished run)."""
  keys = _member_eval_keys(program)
  for k, record in records.active():
    if record.has_final(step):
      continue
    key = keys[k]
    config = program.members.configs[k]
    results = program.task.final_metrics(config, program.model,
                                         _member_variables(state, k), program.data.test, key)
    if state.ema_params is not None:
      averaged = program.task.final_metrics(
          config, program.model, _member_variables(state, k, "ema_params"),
          program.data.test, key)
      results = {**results, **{f"ema_{name}": v for name, v in averaged.items()}}
    if results:
      record.write(step, {"final": 1, **results}, scalars=True)
      logging.info("%sfinal: %s", f"{records.names[k]}: " if len(records.members) > 1 else "",
                   " ".join(f"{name} {value:.4f}" for name, value in results.items()))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  check_resumable_config(config, workdir)
  check_workdir(workdir, needed_bytes=0)
  mesh = create_mesh()
  members = sweep_members(config, workdir)
  task = get_task(config.task)
  program = build_program(config, mesh, members, task, load_data(config, task, mesh))
  state, checkpoints, latest = init_or_restore(config, workdir, program)
  records = Records(config, workdir, members, state, latest)
  if program.norms_fn and latest is None:  # ||v|| and g/||v|| right after the init.
    records.write_norms(0, fetch(program.norms_fn(state.params)))
  last_good_checkpoint = latest

  def stop_if_all_stopped():
    if len(records.nonfinite) < len(members.configs):
      return
    where = (f"step {last_good_checkpoint} in {checkpoints.directory}"
             if last_good_checkpoint is not None else "none (no epoch finished)")
    step, loss = min(records.nonfinite.values())
    raise NonFiniteLossError(
        f"Non-finite training loss {loss} at step {step}. Stopped; the last good "
        f"checkpoint is {where}, left intact. Lower config.optimizer.learning_rate "
        "and start a new workdir or resume.")

  first_epoch = int(fetch(state.step)[0]) // program.steps_per_epoch
  for epoch in range(first_epoch, config.num_epochs):
    epoch_start = time.perf_counter()
    state, sums, last = train_epoch(config, program, state, epoch, records,
                                    stop_if_all_stopped)
    train_time = time.perf_counter() - epoch_start
    evaluated = is_eval_epoch(epoch + 1, config.eval_every_epochs, config.num_epochs)
    tests = evaluate(program, state) if evaluated else None
    step = (epoch + 1) * program.steps_per_epoch
    for k, record in records.active():
      summary = {**{f"train_{name}": sums[name][k] / sums["count"][k]
                    for name in task.TRAIN_METRICS},
                 "learning_rate": float(last["learning_rate"][k]),
                 "epoch": epoch + 1, **(tests[k] if evaluated else {}),
                 "epoch_time_s": train_time,
                 "images_per_s": program.steps_per_epoch * config.batch_size / train_time}
      record.write(step, summary, scalars=True)
      test = (" ".join(f"{name} {value:.4f}" for name, value in tests[k].items())
              if evaluated else "test: not evaluated")
      logging.info("%sepoch %d: %s | %s | %.0f s",
                   f"{records.names[k]}: " if len(members.configs) > 1 else "", epoch + 1,
                   " ".join(f"train_{name} {summary[f'train_{name}']:.4f}"
                            for name in task.TRAIN_METRICS), test, train_time)
    if evaluated and hasattr(task, "pictures") and config.pictures_every_epochs > 0 and (
        (epoch + 1) % config.pictures_every_epochs == 0 or epoch + 1 == config.num_epochs):
      write_pictures(program, state, records, step)
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
      last_good_checkpoint = step
  if hasattr(task, "final_metrics"):
    final_metrics(program, state, records, config.num_epochs * program.steps_per_epoch)
  records.close()
  checkpoints.close()
  if sweep.is_sweep(config):
    return state
  return jax.tree.map(lambda x: x[0], state)
