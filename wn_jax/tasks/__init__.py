"""Tasks: what differs between the paper's experiments, behind one interface.

The loop (`wn_jax.trainer.train`, `wn_jax.trainer.program`, `wn_jax.trainer.steps`) knows no task:
`config.task` names one of `TASKS`, and the task module owns its data, its
model, its objective, its metrics and its pictures. Every task module
defines the same names (`check_task` refuses a module that lacks one):

  RNG_NAMES: tuple[str, ...]
      the per-step random streams the objective draws from ('noise',
      'dropout', ...): the loop splits `fold_in(step_key, step)` into one
      key per name, so a resumed run draws the same numbers.
  INIT_RNG_NAMES: tuple[str, ...]
      the streams of the data-dependent init besides 'params'.
  TRAIN_METRICS / EVAL_METRICS: tuple[str, ...]
      the names, in record order, of what `train_loss` returns per batch
      (its first is 'loss', the minimised objective) and what `eval_sums`
      sums over the test set; records hold `train_<name>`, `test_<name>`
      (and `ema_test_<name>` with a moving average).
  validate_config(config) -> None
      raises ValueError naming the key, for the task's own keys.
  load_data(config) -> TaskData
      host arrays: `train` and `test` dicts of arrays with a common
      leading example axis (what a batch gathers), and `info`. A task
      that makes its own experience (the DQN) gives `train` {} and
      `steps_per_epoch`; its steps get empty batches.
  create_model(config, info) -> a Flax Linen module (or its functional
      twin) with `init`/`apply`/`clone`, and `init_scale`, `data_init`
      and `parameterization` fields (the sweep sets the first two).
  create_optimizer(config, steps_per_epoch, learning_rate=None)
      -> an optax transformation made by `optax.inject_hyperparams`, whose
      `learning_rate` hyperparameter the loop records.
  init_variables(config, model, batch, rngs) -> variables
      the data-dependent init on one batch (`model.init`).
  train_loss(config, model, params, model_state, batch, rngs)
      -> (loss, (metrics, collection_updates)): the objective of one batch,
      differentiated with respect to `params`.
  eval_sums(config, model, variables, batch, mask, key) -> dict
      sums over the unmasked examples of a test batch of every name in
      EVAL_METRICS, and 'count'.
A task defines only what it has; the loop's defaults cover the rest:
  pictures(config, model, variables, test, key) -> dict[str, np.ndarray]
      uint8 images [H, W, C], or animations [frames, H, W, C], for
      TensorBoard and the docs (default: none).
  final_metrics(config, model, variables, test, key) -> dict[str, float]
      what is measured once, after the last epoch (default: nothing).
  UNGUARDED_COLLECTIONS: tuple[str, ...]
      model-state collections the step advances whatever its loss
      (`steps.keep_finite` keeps every other one of a member whose loss
      turned non-finite): an environment and its replay, which guarding
      would copy every step (default: none).
  TRAINING_INDEPENDENT_OF_NUM_EPOCHS: bool
      True where nothing the step computes depends on `config.num_epochs`
      (a constant learning rate, schedules over steps), so a finished run
      may resume with a larger `num_epochs` and go on along the same
      trajectory (`config_checks.check_resumable_config`; default False).

`TaskData.info` carries what the model needs from the data (the number of
classes, the image shape). Adding a task: write `wn_jax/tasks/<name>.py`
with these names, add it to `TASKS`, and a config with `config.task =
'<name>'`.
"""

from __future__ import annotations

from types import ModuleType

from wn_jax.tasks import classification, dqn, draw, vae
from wn_jax.tasks.base import TaskData

TASKS: dict[str, ModuleType] = {"classification": classification, "vae": vae, "draw": draw,
                                "dqn": dqn}

TASK_INTERFACE = (
    "RNG_NAMES", "INIT_RNG_NAMES", "TRAIN_METRICS", "EVAL_METRICS", "validate_config",
    "load_data", "create_model", "create_optimizer", "init_variables", "train_loss",
    "eval_sums")


def check_task(module: ModuleType) -> None:
  """Raises TypeError if `module` lacks a name of the task interface."""
  missing = [name for name in TASK_INTERFACE if not hasattr(module, name)]
  if missing:
    raise TypeError(f"Task module {module.__name__} lacks {', '.join(missing)} of the "
                    "task interface (see wn_jax.tasks).")
  if module.TRAIN_METRICS[0] != "loss":
    raise TypeError(f"{module.__name__}.TRAIN_METRICS must start with 'loss', got "
                    f"{module.TRAIN_METRICS}.")


def get_task(name: str) -> ModuleType:
  """The task module `config.task` names; ValueError naming the valid ones."""
  if name not in TASKS:
    raise ValueError(f"config.task must be one of {', '.join(TASKS)}, got {name!r}.")
  check_task(TASKS[name])
  return TASKS[name]


__all__ = ["TASKS", "TaskData", "check_task", "get_task"]
