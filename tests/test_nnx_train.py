"""config.model.api='nnx': the CIFAR run through the NNX modules, same loop."""

import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from wn_jax.trainer import config_checks, record_files, train


def _records(directory):
  return record_files.read_records(str(directory))


def _assert_records_close(a, b, rtol=1e-5, atol=1e-5):
  assert [sorted(r) for r in a] == [sorted(r) for r in b]
  for ra, rb in zip(a, b):
    for key, value in ra.items():
      timing = key.endswith("_s") or "per_s" in key  # wall times differ
      if isinstance(value, (int, float)) and not timing:
        np.testing.assert_allclose(rb[key], value, rtol=rtol, atol=atol, err_msg=key)


def _quick_epoch(image_folder, api, variant="wn_mobn"):
  """One epoch of the quick preset (width 16) on the 60-image folder."""
  config = tiny_config(image_folder, f"{variant},quick")
  config.model.width = 16
  config.num_epochs = 1
  config.optimizer.anneal_start_epoch = 1
  config.model.api = api
  return config


@pytest.mark.slow
def test_nnx_run_gives_the_records_of_the_linen_run(image_folder, tmp_path):
  states = {}
  for api in ("linen", "nnx"):
    states[api] = train.train_and_evaluate(_quick_epoch(image_folder, api),
                                           str(tmp_path / api))
  records = {api: _records(tmp_path / api) for api in states}
  assert any("test_error" in r for r in records["nnx"])
  _assert_records_close(records["linen"], records["nnx"])
  # The same state layout, so a checkpoint of one API resumes on the other.
  assert jax.tree.structure(states["linen"]) == jax.tree.structure(states["nnx"])
  for a, b in zip(jax.tree.leaves(states["linen"]), jax.tree.leaves(states["nnx"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_unknown_api_fails_clearly(image_folder):
  config = tiny_config(image_folder, "wn")
  config.model.api = "haiku"
  with pytest.raises(ValueError, match="config.model.api must be one of"):
    config_checks.validate_config(config, 1)


def _member(state, k):
  return jax.tree.map(lambda x: x[k], state)


def _assert_trees_equal(a, b, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.mark.slow  # four training runs
def test_nnx_run_resumes_and_takes_over_a_linen_checkpoint(image_folder, tmp_path):
  def config(api, num_epochs=2):
    c = tiny_config(image_folder, "wn_mobn")
    c.model.api = api
    c.num_epochs = num_epochs
    c.ema_decay = 0.9  # the parameters' moving average resumes too
    return c

  uninterrupted = train.train_and_evaluate(config("nnx"), str(tmp_path / "a"))
  for first_api in ("nnx", "linen"):  # "killed" after epoch 1's checkpoint
    workdir = str(tmp_path / first_api)
    train.train_and_evaluate(config(first_api, num_epochs=1), workdir)
    os.remove(os.path.join(workdir, "config.json"))  # the user restarts, 2 epochs
    resumed = train.train_and_evaluate(config("nnx"), workdir)
    assert int(resumed.step) == int(uninterrupted.step) == 12
    # nnx -> nnx is the same program: bitwise. linen -> nnx: the first epoch
    # ran through Linen, whose compiled step is the NNX one (the same XLA
    # FLOPs and bytes): measured bitwise equal too (jax 0.10.2 and 0.12).
    _assert_trees_equal(resumed, uninterrupted, atol=0)
    assert ([r["step"] for r in _records(workdir)] ==
            [r["step"] for r in _records(tmp_path / "a")])


@pytest.mark.slow  # a two-member sweep on each API, and one member alone
def test_nnx_two_member_sweep_equals_its_members_alone_and_the_linen_sweep(
    image_folder, tmp_path):
  def config(api, **sweep):
    c = tiny_config(image_folder, "wn")
    c.model.api = api
    c.num_epochs = 1
    for key, values in sweep.items():
      setattr(c.sweep, key, values)
    return c

  members = dict(seed=(0, 1), learning_rate=(1e-3, 3e-3), init_scale=(1.0, 0.5))
  swept = train.train_and_evaluate(config("nnx", **members), str(tmp_path / "nnx"))
  assert np.asarray(swept.step).tolist() == [6, 6]
  alone = train.train_and_evaluate(
      config("nnx", seed=(1,), learning_rate=(3e-3,), init_scale=(0.5,)),
      str(tmp_path / "alone"))
  # Measured max |member - alone| 1.8e-7 / 3.9e-7 (jax 0.10.2 / 0.12), as
  # the Linen members (1.8e-7..1.1e-6): the same 1e-5 as their tests.
  _assert_trees_equal(_member(swept, 1), _member(alone, 0), atol=1e-5)
  # The same program as the Linen sweep: measured bitwise equal (both jax).
  linen = train.train_and_evaluate(config("linen", **members), str(tmp_path / "linen"))
  _assert_trees_equal(swept, linen, atol=0)
  assert not np.allclose(jax.tree.leaves(_member(swept, 0).params)[0],
                         jax.tree.leaves(_member(swept, 1).params)[0])
  name = "wn_lr0.003_s1_is0.5"
  _assert_records_close(_records(tmp_path / "linen" / name),
                        _records(tmp_path / "nnx" / name))
