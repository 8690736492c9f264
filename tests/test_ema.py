"""A moving average of the parameters (config.ema_decay), evaluated alongside."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from wn_jax.tasks import classification
from wn_jax.trainer import config_checks, record_files, steps, train


@pytest.mark.slow  # 46 s on the 2-core CPU
def test_the_average_follows_its_formula_step_by_step(image_folder):
  config = tiny_config(image_folder, "wn_mobn")
  decay = 0.75
  model = classification.create_model(config, {"num_classes": 3})
  optimizer = functools.partial(classification.create_optimizer, config, 6)
  batch = jax.random.normal(jax.random.key(0), (10, 12, 12, 3))
  labels = jnp.arange(10) % 3
  lr = jnp.float32(1e-2)
  bound = dict(task=classification, config=config, model=model, optimizer=optimizer)
  state = steps.initialize({"images": batch}, jax.random.key(1), jnp.float32(1.0), lr,
                           ema=True, **bound)
  step = functools.partial(steps.train_step, ema_decay=decay, **bound)
  params = [state.params]
  for i in range(3):
    state, _ = step(state, {"images": batch, "labels": labels}, jax.random.key(2 + i), lr)
    params.append(state.params)
  # ema_3 = d^3 p0 + (1-d) (d^2 p1 + d p2 + p3), written out.
  expected = jax.tree.map(
      lambda p0, p1, p2, p3: decay**3 * p0 + (1 - decay) * (decay**2 * p1 + decay * p2 + p3),
      *params)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(state.ema_params)[0],
                         jax.tree.leaves(state.params)[0])


@pytest.mark.slow  # a whole training run
def test_both_test_errors_are_logged(image_folder, tmp_path):
  config = tiny_config(image_folder, "wn")
  config.ema_decay = 0.9
  state = train.train_and_evaluate(config, str(tmp_path))
  assert state.ema_params is not None
  epochs = [r for r in record_files.read_records(str(tmp_path)) if "test_error" in r]
  assert len(epochs) == 2
  for record in epochs:
    assert 0 <= record["ema_test_error"] <= 1 and np.isfinite(record["ema_test_loss"])
  # The averaged parameters are not the raw ones: the two evaluations differ.
  assert any(r["ema_test_loss"] != r["test_loss"] for r in epochs)


def test_off_by_default_and_bad_decay_is_refused(image_folder):
  config = tiny_config(image_folder)
  assert config.ema_decay == 0.0
  config.ema_decay = 1.0
  with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\) \(0 = off\), got 1.0"):
    config_checks.validate_config(config, num_devices=1)
