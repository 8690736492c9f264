"""The task interface: the loop serves any task module, the classifier's
records are those it had before the loop knew of tasks, and old workdirs
resume."""

import json
import types

import pytest
from conftest import tiny_config

from configs import cifar, minatar_dqn, mnist_vae
from wn_jax import tasks
from wn_jax.trainer import config_checks, record_files, train

# metrics.jsonl of a tiny run (conftest's image folder and tiny_config)
# written by the classifier when it was the loop's only experiment (the tree
# before wn_jax/tasks existed), Python 3.13 + jax 0.12.0.1 on XLA:CPU. The
# loop's generalisation must leave them bitwise the same; on another jax
# version or backend, rounding may differ: regenerate them with the code of
# that tree, never from the code under test.
CLASSIFIER_RECORDS = {
    "wn_mobn": [
        {"step": 6, "train_loss": 1.3562317490577698, "train_error": 0.6833333373069763,
         "test_loss": 102.75278727213542, "test_error": 0.6666666666666666},
        {"step": 12, "train_loss": 1.2995226780573528, "train_error": 0.6833333373069763,
         "test_loss": 129.96549479166666, "test_error": 0.6666666666666666}],
}


@pytest.mark.slow  # a tiny training run (bn's records were compared the same way, by hand)
@pytest.mark.parametrize("variant", sorted(CLASSIFIER_RECORDS))
def test_the_classifier_records_what_it_did_before_the_task_interface(
    image_folder, tmp_path, variant):
  import jax
  if not (jax.__version__.startswith("0.12") and jax.default_backend() == "cpu"):
    pytest.skip("records measured with jax 0.12 on XLA:CPU")
  train.train_and_evaluate(tiny_config(image_folder, variant), str(tmp_path))
  epochs = [r for r in record_files.read_records(str(tmp_path)) if "train_loss" in r]
  got = [{key: record[key] for key in CLASSIFIER_RECORDS[variant][0]} for record in epochs]
  assert got == CLASSIFIER_RECORDS[variant]


def test_every_task_has_the_interface_and_an_unknown_task_is_named():
  for module in tasks.TASKS.values():
    tasks.check_task(module)
  with pytest.raises(ValueError, match="config.task must be one of classification, vae, draw, "
                                       "dqn, "
                                       "got 'gan'"):
    tasks.get_task("gan")
  incomplete = types.ModuleType("incomplete")
  incomplete.RNG_NAMES = ()
  with pytest.raises(TypeError, match="incomplete lacks INIT_RNG_NAMES, TRAIN_METRICS"):
    tasks.check_task(incomplete)


def _write_without_added_keys(config, path, keys=tuple(config_checks.ADDED_KEYS)):
  """config.json as written before `keys` (of ADDED_KEYS) existed."""
  saved = json.loads(config.to_json())
  for key in keys:
    *sections, name = key.split(".")
    node = saved
    for section in sections:
      node = node.get(section, {})
    node.pop(name, None)
  with open(path / "config.json", "w") as f:
    json.dump(saved, f)


def test_a_workdir_from_before_the_task_keys_resumes_and_another_task_does_not(tmp_path):
  _write_without_added_keys(cifar.get_config("wn"), tmp_path)
  config_checks.check_resumable_config(cifar.get_config("wn"), str(tmp_path))
  (tmp_path / "dqn").mkdir()  # a MinAtar DQN from before the Atari keys
  _write_without_added_keys(minatar_dqn.get_config("wn"), tmp_path / "dqn",
                            ("env.suite", "dqn.life_loss_terminal", "dqn.test_env_steps"))
  config_checks.check_resumable_config(minatar_dqn.get_config("wn"), str(tmp_path / "dqn"))
  with pytest.raises(ValueError, match="task: saved 'classification', now 'vae'"):
    config_checks.check_resumable_config(mnist_vae.get_config("wn"), str(tmp_path))


@pytest.mark.slow  # four inits of the classifier: ~8 s on the 2-core CPU
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_the_classifier_takes_the_direct_reading_of_normal_on_its_built_model(api):
  """`normal,direct`: every frozen scale is 1 after the init, each kernel is
  the scaled reading's s * kernel, and the two compute the same function."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from wn_jax.tasks import classification
  images = jax.random.normal(jax.random.key(0), (24, 16, 16, 3))
  variables, logits = {}, {}
  for variant in ("normal", "normal,direct"):
    config = cifar.get_config(variant)
    config.model.update(width=4, api=api)
    model = classification.create_model(config, {"num_classes": 10})
    rngs = {"params": jax.random.key(1), "noise": jax.random.key(2),
            "dropout": jax.random.key(3)}
    variables[variant] = classification.init_variables(config, model, {"images": images}, rngs)
    logits[variant] = model.apply(variables[variant], images, train=False)
  scaled, direct = variables["normal"], variables["normal,direct"]
  scales = jax.tree.leaves(scaled["frozen"])
  assert len(scales) == 10 and min(float(jnp.std(s)) for s in scales) > 0
  for s in jax.tree.leaves(direct["frozen"]):
    np.testing.assert_array_equal(s, np.ones_like(s))
  layer = scaled["params"]["NormalizedConv_1"]["linear"]
  np.testing.assert_allclose(direct["params"]["NormalizedConv_1"]["linear"]["kernel"],
                             layer["kernel"] * scaled["frozen"]["NormalizedConv_1"]["linear"]["scale"],
                             rtol=1e-6)
  assert np.all(np.isfinite(logits["normal"]))
  np.testing.assert_allclose(logits["normal"], logits["normal,direct"], rtol=1e-4, atol=1e-5)
  if api == "linen":  # fold knows the reading: the folded direct model is the same function
    import wn_jax
    folded_model, folded = wn_jax.fold(model, direct)
    np.testing.assert_allclose(folded_model.apply(folded, images, train=False),
                               logits["normal,direct"], rtol=1e-4, atol=1e-5)
