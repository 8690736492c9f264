"""Tests of the training loop, the optimizer recipe, checkpoints, and the CLI."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MODEL_FUNCTIONS, REPO_ROOT, tiny_config
from flax import linen as nn

from configs import cifar
from wn_jax.data import batches, sources, zca
from wn_jax.layers.parameterization import PARAMETERIZATIONS
from wn_jax.tasks import classification
from wn_jax.trainer import config_checks, record_files, train


def _read_metrics(workdir):
  return record_files.read_records(str(workdir))


def _lrelu(x):
  return np.maximum(x, 0.1 * x)


def _max_pool_2x2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _eval_forward(params, model_state, x):
  """The CIFAR net in evaluation mode written out in numpy (float64): no
  noise or dropout, BN / mean-only BN with the running statistics."""
  frozen = model_state.get("frozen", {})
  stats = model_state.get("batch_stats", {})

  def layer(name, x, padding=None):
    p = {k: np.asarray(v, np.float64) for k, v in params[name]["linear"].items()}
    if "v" in p:  # w = g v / ||v||
      w = p["g"] * p["v"] / np.sqrt(np.sum(p["v"] ** 2, axis=tuple(range(p["v"].ndim - 1))))
    else:
      w = p["kernel"]
    if w.ndim == 2:
      y = x @ w
    else:  # stride 1, 'SAME' (pad k//2) or 'VALID'
      kh, kw = w.shape[:2]
      pad = 0 if padding == "VALID" else kh // 2
      xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      out_h, out_w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
      y = sum(xp[:, i:i + out_h, j:j + out_w] @ w[i, j] for i in range(kh) for j in range(kw))
    if name in frozen:
      y = y * np.asarray(frozen[name]["linear"]["scale"], np.float64)
    if "b" in p:
      y = y + p["b"]
    if name in stats:
      s = {k: np.asarray(v, np.float64) for k, v in stats[name]["norm"].items()}
      n = {k: np.asarray(v, np.float64) for k, v in params[name]["norm"].items()}
      if "var" in s:  # BN: (y - mean) / sqrt(var + 1e-6) * scale + b
        y = (y - s["mean"]) / np.sqrt(s["var"] + 1e-6) * n["scale"] + n["b"]
      else:  # mean-only BN: y - mean + b
        y = y - s["mean"] + n["b"]
    return y

  x = np.asarray(x, np.float64)
  for i in range(3):
    x = _lrelu(layer(f"NormalizedConv_{i}", x))
  x = _max_pool_2x2(x)
  for i in range(3, 6):
    x = _lrelu(layer(f"NormalizedConv_{i}", x))
  x = _max_pool_2x2(x)
  x = _lrelu(layer("NormalizedConv_6", x, padding="VALID"))
  for i in (7, 8):
    x = _lrelu(layer(f"NormalizedConv_{i}", x))
  return layer("NormalizedDense_0", x.mean(axis=(1, 2)))


# The fast tier trains `wn` (the daily loop's one training run); the others are slow.
@pytest.mark.parametrize("parameterization", [
    p if p == "wn" else pytest.param(p, marks=pytest.mark.slow) for p in PARAMETERIZATIONS])
def test_every_parameterization_trains(parameterization, image_folder, tmp_path,
                                       model_compilations):
  config = tiny_config(image_folder, parameterization)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 12  # 60 images / batch 10 x 2 epochs
  # The model's init, step and eval were compiled (and this check sees them).
  assert all(any(f in name for name in model_compilations)
             for f in MODEL_FUNCTIONS), model_compilations
  epochs = [r for r in _read_metrics(tmp_path) if "test_error" in r]
  assert [r["epoch"] for r in epochs] == [1, 2]
  for r in epochs:
    assert np.isfinite(r["train_loss"]) and 0 <= r["test_error"] <= 1
  records = _read_metrics(tmp_path)
  norms = [r for r in records if any(k.endswith("/v_norm") for k in r)]
  if "wn" in parameterization:  # At the init, then every 3 steps.
    assert [r["step"] for r in norms] == [0, 3, 6, 9, 12]
  else:
    assert not norms and all(len(r) > 1 for r in records)  # No empty records.
  assert os.path.exists(os.path.join(tmp_path, "config.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))

  # Training moved the running statistics of every BN / mean-only BN layer
  # away from their initial values (mean 0, variance 1) ...
  stats = state.model_state.get("batch_stats", {})
  assert bool(stats) == (parameterization in ("bn", "mobn", "wn_mobn"))
  for name, layer_stats in stats.items():
    assert np.all(layer_stats["norm"]["mean"] != 0.0), name
    if parameterization == "bn":
      assert np.all(layer_stats["norm"]["var"] != 1.0), name
  # ... and the last evaluation is that of the final state with them: the
  # test error and loss of a forward pass written out independently.
  dataset = sources.load_dataset(config.data)
  _, test_x = zca.whiten_dataset(dataset, config.data.zca_regularization)
  logits = _eval_forward(state.params, state.model_state, test_x)
  labels = dataset.test_labels
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  assert epochs[-1]["test_error"] == np.mean(logits.argmax(-1) != labels)
  np.testing.assert_allclose(
      epochs[-1]["test_loss"], -np.mean(log_probs[np.arange(len(labels)), labels]), rtol=1e-4)


@pytest.mark.slow  # a longer training run
def test_loss_drops_on_memorisable_subset(image_folder, tmp_path):
  config = tiny_config(image_folder, "wn")
  config.num_epochs = 30
  config.optimizer.anneal_start_epoch = 20
  config.checkpoint_every_epochs = 30  # only the final one: not the point here
  config.optimizer.learning_rate = 3e-3
  config.model.dropout_rate = 0.0
  config.model.input_noise = 0.0
  train.train_and_evaluate(config, str(tmp_path))
  epochs = [r for r in _read_metrics(tmp_path) if "train_loss" in r]
  assert epochs[-1]["train_loss"] < 0.2 * epochs[0]["train_loss"], epochs
  assert epochs[-1]["train_error"] <= 0.05, epochs  # at most 3 of the 60 images


@pytest.mark.slow  # 19 s on the 2-core CPU
def test_train_subset_and_eval_every_epochs(image_folder, tmp_path):
  config = tiny_config(image_folder, "wn")
  config.data.train_subset = 30  # 10 of each of the 3 classes: 3 steps per epoch.
  config.num_epochs = 3
  config.eval_every_epochs = 2  # After epoch 2 and after the last.
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 9
  epochs = [r for r in _read_metrics(tmp_path) if "train_loss" in r]
  assert [r["epoch"] for r in epochs] == [1, 2, 3]
  assert [r["epoch"] for r in epochs if "test_error" in r] == [2, 3]
  assert [train.is_eval_epoch(e, 5, 12) for e in range(1, 13)] == [
      e in (5, 10, 12) for e in range(1, 13)]


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_learning_rate_and_b1_follow_the_recipe():
  config = cifar.get_config()
  steps_per_epoch = 500
  learning_rate, b1 = classification.learning_rate_and_b1(config, steps_per_epoch)
  # Authors' code: lr * min(2 - epoch/100, 1); beta1 0.9 then 0.5 from epoch 100.
  for epoch in (0, 99, 100, 150, 199):
    for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
      np.testing.assert_allclose(learning_rate(step), 1e-3 * min(2 - epoch / 100, 1),
                                 rtol=1e-6)
      assert float(b1(step)) == pytest.approx(0.9 if epoch < 100 else 0.5)
  # Through the optimizer itself: the injected hyperparameters at each step.
  tx = classification.create_optimizer(config, steps_per_epoch=2)
  params = {"w": jnp.ones(3)}
  opt_state = tx.init(params)
  seen = {}
  for step in range(2 * 200):
    seen[step // 2] = (float(opt_state.hyperparams["learning_rate"]),
                       float(opt_state.hyperparams["b1"]))
    _, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params)
  for epoch in (0, 99, 100, 150, 199):
    np.testing.assert_allclose(seen[epoch][0], 1e-3 * min(2 - epoch / 100, 1), rtol=1e-6)
    assert seen[epoch][1] == pytest.approx(0.9 if epoch < 100 else 0.5)


def test_learning_rate_and_b1_anneal_from_any_epoch():
  """10 epochs, annealing from epoch 3: constant through epoch 3, then
  (10 - epoch) / 7 of it; beta1 0.9 before epoch 3 and 0.5 from it."""
  config = cifar.get_config()
  config.num_epochs = 10
  config.optimizer.anneal_start_epoch = 3
  steps_per_epoch = 4
  learning_rate, b1 = classification.learning_rate_and_b1(config, steps_per_epoch)
  expected = {0: (1e-3, 0.9), 2: (1e-3, 0.9), 3: (1e-3, 0.5), 4: (6e-3 / 7, 0.5),
              9: (1e-3 / 7, 0.5)}
  for epoch, (lr, beta1) in expected.items():
    for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
      np.testing.assert_allclose(learning_rate(step), lr, rtol=1e-6, err_msg=str(epoch))
      np.testing.assert_allclose(b1(step), beta1, rtol=1e-6, err_msg=str(epoch))
  # The optimizer sees the same values.
  tx = classification.create_optimizer(config, steps_per_epoch)
  params = {"w": jnp.ones(3)}
  opt_state = tx.init(params)
  seen = {}
  for step in range(10 * steps_per_epoch):
    seen[step // steps_per_epoch] = (float(opt_state.hyperparams["learning_rate"]),
                                     float(opt_state.hyperparams["b1"]))
    _, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params)
  for epoch, values in expected.items():
    np.testing.assert_allclose(seen[epoch], values, rtol=1e-6, err_msg=str(epoch))


def test_adam_has_epsilon_inside_the_square_root():
  config = cifar.get_config()
  tx = classification.create_optimizer(config, steps_per_epoch=10)
  grad = jnp.array([1e-5, 1.0])
  params = jnp.zeros(2)
  updates, _ = tx.update(grad, tx.init(params), params)
  # Step 1: m_hat = g, v_hat = g^2; code: -lr * m_hat / sqrt(v_hat + 1e-8).
  expected = -1e-3 * grad / jnp.sqrt(grad**2 + 1e-8)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


class _LinearProbe(nn.Module):
  """Logits linear in the pixels: any change of the images changes the loss."""

  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_the_augment_variant_trains_on_flipped_and_shifted_images():
  images = jax.random.normal(jax.random.key(0), (8, 6, 6, 3))
  batch = {"images": images, "labels": jnp.arange(8) % 10}
  model = _LinearProbe()
  params = model.init(jax.random.key(1), images, train=True)["params"]
  key = jax.random.key(2)

  def loss(config, batch):
    return float(classification.train_loss(config, model, params, {}, batch,
                                           {"augment": key})[0])

  augmented = {**batch, "images": batches.augment(key, images, True, 2)}
  plain, augment = cifar.get_config("wn"), cifar.get_config("wn,augment")
  assert loss(augment, batch) == pytest.approx(loss(plain, augmented), rel=1e-6)
  assert loss(augment, batch) != pytest.approx(loss(plain, batch), rel=1e-3)


def test_config_defaults_match_the_paper_recipe():
  c = cifar.get_config()
  assert (c.data.augment_flip, c.data.augment_max_translation) == (False, 0)
  assert c.data.zca_regularization == 1e-5
  assert (c.model.width, c.model.input_noise, c.model.dropout_rate) == (96, 0.15, 0.5)
  assert (c.model.leaky_relu_slope, c.model.bn_epsilon, c.model.bn_momentum) == (0.1, 1e-6, 0.9)
  assert (c.num_epochs, c.batch_size, c.init_batch_size) == (200, 100, 500)
  o = c.optimizer
  assert (o.learning_rate, o.b1, o.b1_anneal, o.b2, o.eps, o.eps_root,
          o.anneal_start_epoch) == (1e-3, 0.9, 0.5, 0.999, 0.0, 1e-8, 100)
  assert c.model.parameterization == "wn" and c.model.data_init
  assert cifar.get_config("wn_mobn,quick").model.parameterization == "wn_mobn"


@pytest.mark.slow  # three training runs
def test_resume_equals_uninterrupted_run(image_folder, tmp_path):
  config = tiny_config(image_folder, "wn_mobn")
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

  first = tiny_config(image_folder, "wn_mobn")
  first.num_epochs = 1  # "interrupted" after the first epoch's checkpoint
  first.optimizer.anneal_start_epoch = 1
  workdir = str(tmp_path / "b")
  os.makedirs(workdir)  # Records of an attempt that died before its first checkpoint.
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write('{"step": 0, "stale": 1}\n{"step": 3, "stale": 1}\n')
  train.train_and_evaluate(first, workdir)
  # The resumed run must use the same config (schedule) as the full one; only
  # num_epochs grew, so rewrite the record the way a user restarting would.
  os.remove(os.path.join(workdir, "config.json"))
  resumed = train.train_and_evaluate(config, workdir)
  assert int(resumed.step) == int(uninterrupted.step) == 12
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["step"] for r in _read_metrics(workdir) if "test_error" in r] == [6, 12]
  # The same records as the uninterrupted run (the init's norms once, no stale ones).
  assert ([sorted(r) for r in _read_metrics(workdir)] ==
          [sorted(r) for r in _read_metrics(tmp_path / "a")])
  assert [r["step"] for r in _read_metrics(workdir)] == [
      r["step"] for r in _read_metrics(tmp_path / "a")]


@pytest.mark.slow  # a whole training run
def test_refuses_to_resume_with_a_different_config(image_folder, tmp_path, monkeypatch):
  config = tiny_config(image_folder, "wn")
  config.num_epochs = 1
  config.optimizer.anneal_start_epoch = 1
  train.train_and_evaluate(config, str(tmp_path))
  other = tiny_config(image_folder, "bn")
  other.num_epochs = 1
  other.optimizer.anneal_start_epoch = 1
  monkeypatch.setattr(sources, "load_dataset", _loader_that_must_not_run)
  with pytest.raises(ValueError, match=re.escape(
      f"Workdir {tmp_path} holds checkpoints of a different config (model.parameterization: "
      "saved 'wn', now 'bn'). Refusing to resume: use a new --workdir, or the saved config.")):
    train.train_and_evaluate(other, str(tmp_path))


def _loader_that_must_not_run(config):
  raise AssertionError("the data was loaded before the bad input was reported")


@pytest.mark.parametrize("key, value, message", [
    ("model.parameterization", "weightnorm",
     "Unknown parameterization 'weightnorm'; valid ones are normal, wn, bn, mobn, wn_mobn."),
    ("optimizer.learning_rate", 0.0,
     "config.optimizer.learning_rate must be positive, got 0.0."),
    ("batch_size", -10, "config.batch_size must be positive, got -10."),
    ("num_epochs", 0, "config.num_epochs must be positive, got 0."),
    ("model.width", 0, "config.model.width must be positive, got 0."),
    ("init_batch_size", 1, "config.init_batch_size=1: the data-dependent init needs at "
     "least 2 examples to compute a standard deviation."),
    ("data.source", "s3", "config.data.source must be one of"),
])
def test_bad_config_fails_before_loading_data_or_compiling(
    key, value, message, image_folder, tmp_path, monkeypatch, model_compilations):
  config = tiny_config(image_folder)
  section, _, name = key.rpartition(".")
  setattr(config[section] if section else config, name, value)
  monkeypatch.setattr(sources, "load_dataset", _loader_that_must_not_run)
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(config, str(tmp_path))
  assert not model_compilations


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    config_checks.validate_config(cifar.get_config(), num_devices=8)  # 100 % 8


def test_unknown_variant():
  with pytest.raises(ValueError, match="Unknown config variant.*valid ones are"):
    cifar.get_config("wn,fast")


def test_missing_data_folder(tmp_path, model_compilations):
  config = tiny_config(str(tmp_path / "nowhere"))
  expected = (
      f"Data folder '{tmp_path / 'nowhere'}' does not exist. Expected the layout "
      "<folder>/<split>/<class name>/<image file> (e.g. <folder>/train/airplane/0000.jpg). "
      "Extract the image tarball (e.g. `tar -xzf cifar10-jpeg.tar.gz -C <dir>`) and pass "
      "--config.data.source=folder --config.data.folder=<dir>/cifar10-jpeg, or use "
      "--config.data.source=tfds on a machine that can download.")
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert str(error.value) == expected
  assert not model_compilations


@pytest.mark.slow  # end-to-end CLI runs
def test_cli_trains_and_resumes(image_folder, tmp_path):
  workdir = tmp_path / "cli"
  command = [
      sys.executable, os.path.join(REPO_ROOT, "train.py"),
      "--config", os.path.join(REPO_ROOT, "configs/cifar.py") + ":wn_mobn,quick",
      "--workdir", str(workdir), "--config.data.source=folder",
      f"--config.data.folder={image_folder}", "--config.model.width=4",
      "--config.num_epochs=1", "--config.optimizer.anneal_start_epoch=1",
      "--config.batch_size=10", "--config.init_batch_size=20",
      "--config.eval_batch_size=8"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test_loss" in result.stderr
  assert json.load(open(workdir / "config.json"))["model"]["parameterization"] == "wn_mobn"
  # The same command again finds the finished run and resumes from it.
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from the checkpoint at step 6" in result.stderr


@pytest.mark.parametrize("config_file, task_lengthens", [
    ("mnist_draw", True), ("mnist_vae", True), ("minatar_dqn", True), ("cifar", False)])
def test_a_run_goes_on_to_more_epochs_only_where_its_training_ignores_the_length(
    config_file, task_lengthens, tmp_path):
  """A larger num_epochs resumes where the task's schedule does not run to
  the last epoch (DRAW, VAE, DQN: constant lr or schedules over steps); the
  classifier's lr anneals to 0 at num_epochs, so there it is refused, and a
  shorter run is refused everywhere."""
  import importlib
  import json

  from wn_jax.trainer import config_checks
  get_config = importlib.import_module(f"configs.{config_file}").get_config
  saved = get_config()
  saved.num_epochs = 5
  if config_file == "cifar":
    saved.optimizer.anneal_start_epoch = 2
  with open(tmp_path / "config.json", "w") as f:
    json.dump(json.loads(saved.to_json()), f)
  longer = get_config()
  longer.update(num_epochs=100, optimizer=saved.optimizer)
  if task_lengthens:
    config_checks.check_resumable_config(longer, str(tmp_path))
  else:
    with pytest.raises(ValueError, match=r"num_epochs: saved 5, now 100\)\. The "
                       r"classification task's training depends on num_epochs"):
      config_checks.check_resumable_config(longer, str(tmp_path))
  shorter = get_config()
  shorter.update(num_epochs=3, optimizer=saved.optimizer)
  with pytest.raises(ValueError, match="num_epochs: saved 5, now 3"):
    config_checks.check_resumable_config(shorter, str(tmp_path))
  other = get_config()
  other.update(num_epochs=100, optimizer=saved.optimizer, seed=7)
  with pytest.raises(ValueError, match=r"seed: saved 0, now 7\)"):
    config_checks.check_resumable_config(other, str(tmp_path))
