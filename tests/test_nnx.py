"""wn_jax.nnx: the NNX layers, their data-dependent init, and parity with Linen."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO_ROOT
from flax import linen as nn
from flax import nnx

import wn_jax
from wn_jax import models, ops
from wn_jax import nnx as wnx
from wn_jax.layers.parameterization import PARAMETERIZATIONS


def _standardized(y, init_scale, feature_dims=1, atol=1e-4):
  axes = tuple(range(y.ndim - feature_dims))
  np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=atol)
  np.testing.assert_allclose(y.std(axis=axes), init_scale, rtol=1e-3)


# --- WeightNorm: parameters, layers, init -----------------------------------


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_g_v_b_are_params_that_grad_and_optimizer_train():
  model = wnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)
  assert set(nnx.to_pure_dict(params)) == {"g", "v", "b"}
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(params)) == {"g": (3,), "v": (4, 3), "b": (3,)}
  x = jax.random.normal(jax.random.key(2), (16, 4))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  assert set(nnx.to_pure_dict(grads)) == {"g", "v", "b"}
  assert float(jnp.abs(grads["g"][...]).min()) > 0
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  g0, v0, b0 = (np.asarray(model.g[...]), np.asarray(model.v[...]),
                np.asarray(model.b[...]))
  optimizer.update(model, grads)
  for before, after in ((g0, model.g), (v0, model.v), (b0, model.b)):
    assert np.abs(np.asarray(after[...]) - before).max() > 1e-4


def test_v_is_drawn_from_n_0_005_and_g_starts_at_its_norm():
  model = wnx.WeightNorm(nnx.Conv(64, 256, (3, 3), rngs=nnx.Rngs(0)), v_init=wnx.default_v_init,
                         rngs=nnx.Rngs(1))
  v = np.asarray(model.v[...])
  assert v.shape == (3, 3, 64, 256)
  assert abs(v.mean()) < 2e-3 and abs(v.std() - 0.05) < 1e-3
  norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1, 2)) + 1e-12)
  np.testing.assert_allclose(model.g[...], norm, rtol=1e-6)
  np.testing.assert_array_equal(model.b[...], 0.0)
  assert model.norm_epsilon == ops.NORM_EPSILON == 1e-12 and model.epsilon == 1e-8


def _layers_and_linen_twins():
  """(NNX layer, its Linen twin, input shape): the layers WeightNorm covers."""
  r = nnx.Rngs(0)
  return [
      (nnx.Linear(6, 5, rngs=r), nn.Dense(5), (32, 6)),
      (nnx.LinearGeneral(6, (2, 3), rngs=r), nn.DenseGeneral((2, 3)), (32, 6)),
      (nnx.Conv(8, 12, (3,), strides=2, kernel_dilation=2, feature_group_count=4, rngs=r),
       nn.Conv(12, (3,), strides=2, kernel_dilation=2, feature_group_count=4), (8, 20, 8)),
      (nnx.Conv(3, 4, (2, 2, 2), padding="VALID", rngs=r),
       nn.Conv(4, (2, 2, 2), padding="VALID"), (4, 5, 5, 5, 3)),
      (nnx.ConvTranspose(3, 5, (3, 3), strides=(2, 2), rngs=r),
       nn.ConvTranspose(5, (3, 3), strides=(2, 2)), (4, 6, 6, 3)),
      (nnx.ConvTranspose(3, 5, (3, 3), transpose_kernel=True, rngs=r),
       nn.ConvTranspose(5, (3, 3), transpose_kernel=True), (4, 6, 6, 3)),
      (nnx.Einsum("bti,hio->btho", (2, 6, 4), (2, 4), rngs=r),
       nn.Einsum((2, 6, 4), "bti,hio->btho"), (8, 5, 6)),
  ]


@pytest.mark.parametrize("index", range(7))
@pytest.mark.slow  # 21 s on the 2-core CPU
def test_weight_norm_matches_the_layer_with_w_and_the_linen_wrapper(index):
  layer, linen_layer, shape = _layers_and_linen_twins()[index]
  x = jax.random.normal(jax.random.key(3), shape) * 2 + 1
  model = wnx.WeightNorm(layer, init_scale=0.7, rngs=nnx.Rngs(1))
  # The same v in the Linen wrapper; its init is the data-dependent init.
  linen = wn_jax.WeightNorm(linen_layer, init_scale=0.7,
                            v_init=lambda *_: model.v[...])
  linen_vars = linen.init(jax.random.key(0), x)
  y_init = wnx.data_init(model, x)
  n = model.g.ndim
  _standardized(y_init, 0.7, n)
  for name in ("v", "g", "b"):
    np.testing.assert_allclose(getattr(model, name)[...], linen_vars["params"][name],
                               rtol=1e-6, atol=1e-6)
  y = model(x)
  np.testing.assert_allclose(y, y_init, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, linen.apply(linen_vars, x), rtol=1e-6, atol=1e-6)
  # The layer itself with kernel w = g v/||v|| and bias b.
  w = ops.weight_normalized_kernel(model.v[...], model.g[...], model.feature_axes)
  layer.kernel.set_value(w)
  expected = layer(x) - (layer.bias[...] if layer.bias is not None else 0)
  np.testing.assert_allclose(y, expected + model.b[...], rtol=1e-5, atol=1e-5)


def test_feature_axes_and_layer_errors():
  r = nnx.Rngs(0)
  model = wnx.WeightNorm(nnx.Linear(4, 3, rngs=r), feature_axes=0, rngs=r)
  assert model.g.shape == (4,)
  with pytest.raises(ValueError, match="no default feature_axes"):
    wnx.WeightNorm(nnx.Embed(4, 3, rngs=r), kernel_name="embedding", rngs=r)
  with pytest.raises(ValueError, match="no nnx.Param named"):
    wnx.WeightNorm(nnx.Linear(4, 3, rngs=r), kernel_name="w", rngs=r)
  with pytest.raises(ValueError, match="must end with the feature subscripts"):
    wnx.WeightNorm(nnx.Einsum("bi,io->ob", (4, 3), rngs=r), rngs=r)


def test_the_wrapped_layer_is_not_changed():
  layer = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  wnx.WeightNorm(layer, rngs=nnx.Rngs(1))
  assert layer.bias is not None and layer.use_bias
  assert set(nnx.to_pure_dict(nnx.state(layer, nnx.Param))) == {"kernel", "bias"}


class TwoLayers(nnx.Module):
  def __init__(self, rngs):
    self.first = wnx.WeightNorm(nnx.Linear(5, 8, rngs=rngs), init_scale=2.0, rngs=rngs)
    self.second = wnx.WeightNorm(nnx.Linear(8, 4, rngs=rngs), init_scale=0.5, rngs=rngs)

  def __call__(self, x):
    self.hidden = nnx.Intermediate(jnp.tanh(self.first(x)))
    return self.second(self.hidden[...])


@pytest.mark.slow  # 4 s on the 2-core CPU
def test_sequential_init_standardizes_each_layer_on_the_initialised_outputs_before_it():
  x = jax.random.normal(jax.random.key(0), (256, 5)) * 3 + 1
  model = TwoLayers(nnx.Rngs(0))
  y = wnx.data_init(model, x)
  _standardized(y, 0.5)
  np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-5)
  # The second layer's statistics are those of tanh(first layer, initialised).
  t = nnx.Linear(8, 4, use_bias=False, rngs=nnx.Rngs(0))
  v = model.second.v[...]
  t.kernel.set_value(v / jnp.linalg.norm(v, axis=0))
  t_out = t(jnp.tanh(model.first(x)))
  np.testing.assert_allclose(model.second.g[...], 0.5 / jnp.sqrt(t_out.var(0) + 1e-8),
                             rtol=1e-5)
  np.testing.assert_allclose(model.second.b[...], -t_out.mean(0) * model.second.g[...],
                             rtol=1e-4, atol=1e-6)


def test_independent_init_takes_statistics_on_the_uninitialised_network():
  x = jax.random.normal(jax.random.key(0), (256, 5)) * 3 + 1
  model = TwoLayers(nnx.Rngs(0))
  v1, v2 = model.first.v[...], model.second.v[...]
  wnx.data_init(model, x, init_order="independent")
  # The second layer saw tanh(x v1) (w = v, no bias), not the initialised first.
  t = jnp.tanh(x @ v1) @ (v2 / jnp.linalg.norm(v2, axis=0))
  np.testing.assert_allclose(model.second.g[...], 0.5 / jnp.sqrt(t.var(0) + 1e-8),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="Unknown init_order"):
    wnx.data_init(model, x, init_order="backwards")


def test_data_init_under_nnx_jit_equals_eager():
  x = jax.random.normal(jax.random.key(0), (64, 5)) * 3 + 1
  eager, jitted = TwoLayers(nnx.Rngs(0)), TwoLayers(nnx.Rngs(0))
  wnx.data_init(eager, x)
  y = nnx.jit(wnx.data_init)(jitted, x)
  _standardized(y, 0.5)
  for a, b in zip(jax.tree.leaves(nnx.state(eager, nnx.Param)),
                  jax.tree.leaves(nnx.state(jitted, nnx.Param))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # 4 s on the 2-core CPU
def test_mean_only_batch_norm_after_weight_norm_without_bias():
  r = nnx.Rngs(0)
  wn = wnx.WeightNorm(nnx.Conv(3, 6, (3, 3), use_bias=False, rngs=r), init_scale=0.3,
                      rngs=r)
  mobn = wnx.MeanOnlyBatchNorm(6, use_running_average=False)
  model = nnx.Sequential(wn, mobn)
  x = jax.random.normal(jax.random.key(1), (32, 8, 8, 3)) * 2 + 1
  assert set(nnx.to_pure_dict(nnx.state(wn, nnx.Param))) == {"g", "v"}
  y = wnx.data_init(model, x)
  _standardized(y, 0.3)
  np.testing.assert_array_equal(mobn.mean[...], 0.0)  # not updated by the init
  pre = wn(x)
  model(x)
  np.testing.assert_allclose(mobn.mean[...], 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(mobn(pre, use_running_average=True),
                             pre - mobn.mean[...] + mobn.b[...], rtol=1e-6)


SHARDED_INIT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sys.path.insert(0, 'tests')
from wn_jax import nnx as wnx
assert jax.device_count() == 8
x = jax.random.normal(jax.random.key(0), (64, 12, 12, 3)) * 2 + 1
rngs = {"noise": jax.random.key(1), "dropout": jax.random.key(2)}
def build():
  return wnx.CifarNet(width=4, parameterization=sys.argv[1], rngs=nnx.Rngs(0))
one = build()
wnx.data_init(one, x, train=True, rngs=rngs)
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
assert len(sharded_x.addressable_shards) == 8 and sharded_x.addressable_shards[0].data.shape[0] == 8
many = build()
nnx.jit(lambda m, x, r: wnx.data_init(m, x, train=True, rngs=r))(many, sharded_x, rngs)
a, b = wnx.to_linen(one), wnx.to_linen(many)
diff = jax.tree.map(lambda p, q: float(jnp.abs(p - q).max()), a, b)
print(json.dumps(max(jax.tree.leaves(diff))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["wn", "wn_mobn"])
def test_data_init_on_a_sharded_batch_uses_the_global_batch_statistics(parameterization):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", SHARDED_INIT, parameterization],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) < 1e-5


# --- The paper's network: NNX vs Linen --------------------------------------


def _linen_and_nnx(parameterization, width=4, batch=20):
  """A Linen CifarNet after `init`, and the NNX one with the same v/kernel
  after `data_init` with the same keys."""
  x = jax.random.normal(jax.random.key(0), (batch, 12, 12, 3)) * 2 + 1
  keys = {"noise": jax.random.key(2), "dropout": jax.random.key(3)}
  linen = models.CifarNet(width=width, parameterization=parameterization)
  linen_vars = linen.init({"params": jax.random.key(1), **keys}, x, train=True)
  model = wnx.CifarNet(width=width, parameterization=parameterization,
                       rngs=nnx.Rngs(5))
  # Copy only the directions/kernels: g, b, frozen scales and batch stats
  # keep the NNX model's own pre-init values, so the init must set them.
  fresh = wnx.to_linen(model)
  for name, layer in fresh["params"].items():
    for key in ("v", "kernel"):
      if key in layer["linear"]:
        layer["linear"][key] = linen_vars["params"][name]["linear"][key]
  wnx.from_linen(model, fresh)
  wnx.data_init(model, x, train=True, rngs=keys)
  return linen, linen_vars, model, x, keys


def _max_abs_diff(a, b):
  diffs = jax.tree.map(lambda p, q: float(jnp.abs(p - q).max()), a, b)
  return max(jax.tree.leaves(diffs), default=0.0)


def _loss(logits):
  return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])


PARITY = {}


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.slow  # 20 s on the 2-core CPU
def test_nnx_and_linen_networks_agree_after_init_in_logits_and_gradients(parameterization):
  linen, linen_vars, model, x, keys = _linen_and_nnx(parameterization)
  init_diff = _max_abs_diff(linen_vars, wnx.to_linen(model))
  assert init_diff < 1e-6
  eval_diff = float(jnp.abs(linen.apply(linen_vars, x, train=False)
                            - model(x, train=False)).max())
  assert eval_diff < 1e-6

  def linen_loss(params):
    logits, updates = linen.apply({**linen_vars, "params": params}, x, train=True,
                                  rngs=keys, mutable=["batch_stats"])
    return _loss(logits), (logits, updates)

  (_, (linen_logits, updates)), linen_grads = jax.value_and_grad(
      linen_loss, has_aux=True)(linen_vars["params"])
  (_, logits), grads = nnx.value_and_grad(
      lambda m: (lambda y: (_loss(y), y))(m(x, train=True, rngs=keys)),
      has_aux=True)(model)
  train_diff = float(jnp.abs(linen_logits - logits).max())
  assert train_diff < 1e-6
  if "batch_stats" in updates:  # the running averages after the training step
    assert _max_abs_diff(updates["batch_stats"], wnx.to_linen(model)["batch_stats"]) < 1e-6
  grad_model = nnx.clone(model)
  nnx.update(grad_model, grads)
  grad_diff = _max_abs_diff(linen_grads, wnx.to_linen(grad_model)["params"])
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(linen_grads))
  assert grad_diff < 1e-6 * max(1.0, scale)
  PARITY[parameterization] = dict(init=init_diff, eval_logits=eval_diff,
                                  train_logits=train_diff, grads=grad_diff)
  print("parity", parameterization, PARITY[parameterization])


@pytest.mark.slow  # 12 s on the 2-core CPU
def test_converter_round_trip_and_errors():
  linen, linen_vars, model, x, _ = _linen_and_nnx("wn_mobn")
  other = wnx.CifarNet(width=4, parameterization="wn_mobn", rngs=nnx.Rngs(9))
  wnx.from_linen(other, wnx.to_linen(model))
  assert _max_abs_diff(wnx.to_linen(other), linen_vars) < 1e-6
  np.testing.assert_allclose(other(x, train=False), linen.apply(linen_vars, x, train=False),
                             atol=1e-6)
  with pytest.raises(ValueError, match="has shape"):
    wnx.from_linen(wnx.CifarNet(width=8, parameterization="wn_mobn", rngs=nnx.Rngs(0)),
                   linen_vars)
  with pytest.raises(ValueError, match="have no"):
    wnx.from_linen(wnx.CifarNet(width=4, parameterization="bn", rngs=nnx.Rngs(0)),
                   linen_vars)
  extra = {**linen_vars, "params": {**linen_vars["params"], "Extra_0": {"w": x}}}
  with pytest.raises(ValueError, match=r"no place for \['params/Extra_0/w'\]"):
    wnx.from_linen(other, extra)


@pytest.mark.parametrize("parameterization", ["normal", "bn", "wn_mobn"])
def test_fold_gives_the_same_eval_logits(parameterization):
  _, _, model, x, keys = _linen_and_nnx(parameterization)
  for step in range(2):  # move the running statistics away from their init
    model(x * (1 + step), train=True, rngs=keys)
  folded = wnx.fold(model)
  assert model.parameterization == parameterization
  assert set(nnx.to_pure_dict(nnx.state(folded.convs[0]))) == {"linear"}
  assert set(nnx.to_pure_dict(nnx.state(folded.convs[0].linear))) == {"kernel", "bias"}
  np.testing.assert_allclose(folded(x, train=False), model(x, train=False), atol=2e-5)
  with pytest.raises(ValueError, match="already folded"):
    wnx.fold(folded)


@pytest.mark.slow  # 3 s on the 2-core CPU
def test_frozen_scale_is_set_by_the_init_and_not_trained():
  _, _, model, x, keys = _linen_and_nnx("normal")
  scale = model.convs[0].linear.scale
  assert isinstance(scale, wnx.Frozen) and not isinstance(scale, nnx.Param)
  before = np.asarray(scale[...])
  assert np.abs(before - 1).max() > 1e-3  # the init set it
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  grads = nnx.grad(lambda m: _loss(m(x, train=True, rngs=keys)))(model)
  optimizer.update(model, grads)
  np.testing.assert_array_equal(scale[...], before)


# --- flax.nnx.WeightNorm, for the README's comparison table ----------------


def test_flax_nnx_weight_norm_as_in_the_table():
  import flax
  linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  model = nnx.WeightNorm(linear, rngs=nnx.Rngs(1))
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  has_scale = any("scales" in path for path, _ in params)
  version = tuple(int(p) for p in flax.__version__.split(".")[:3])
  if version <= (0, 12, 8):
    assert not has_scale  # the scale is fixed at 1: not weight normalization
  elif version >= (0, 12, 12):
    assert has_scale
  # No data-dependent init: the scale starts at 1, whatever the data.
  assert not hasattr(nnx, "data_init")
  model(jax.random.normal(jax.random.key(0), (64, 4)) * 5 + 3)
  (scale,) = jax.tree.leaves(model.scales)
  np.testing.assert_array_equal(scale, 1.0)
  # The call wrote w = v/||v|| into the layer's kernel: no separate v is kept.
  np.testing.assert_allclose(np.linalg.norm(model.layer_instance.kernel[...], axis=0),
                             1.0, rtol=1e-6)
  assert model.epsilon == 1e-12 and model.feature_axes == -1
  transposed = nnx.WeightNorm(
      nnx.ConvTranspose(3, 5, (3, 3), transpose_kernel=True, rngs=nnx.Rngs(0)),
      rngs=nnx.Rngs(1))
  assert jax.tree.leaves(transposed.scales)[0].shape == (3,)  # the input channels
  ours = wnx.WeightNorm(
      nnx.ConvTranspose(3, 5, (3, 3), transpose_kernel=True, rngs=nnx.Rngs(0)),
      rngs=nnx.Rngs(1))
  assert ours.g.shape == (5,)  # the output channels


@pytest.mark.slow  # 9 s on the 2-core CPU
def test_readme_nnx_example_runs_and_prints_what_the_readme_shows(capsys):
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  section = re.search(r"## Flax NNX\n(.*?)\n## ", readme, re.S).group(1)
  example, printed = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)[:2]
  exec(compile(example, "README.md", "exec"), {})
  out = capsys.readouterr().out
  numbers = lambda text: [float(n) for n in re.findall(r"\d+\.\d+", text)]
  assert out.splitlines()[0] == printed.splitlines()[0]
  np.testing.assert_allclose(numbers(out), numbers(printed), rtol=2e-3,
                             err_msg="Update the README's printed block if this "
                             "change of the example's numbers is intended.")
  v_norms = [float(n) for n in re.findall(r"\|\|v\|\| (\S+),", out)]
  assert len(v_norms) == 5
  assert all(a < b for a, b in zip(v_norms, v_norms[1:]))  # ||v|| grows


# --- The training loop's interface: init/apply of the NNX network --------


@pytest.mark.parametrize("parameterization", ["normal", "wn_mobn"])
@pytest.mark.slow  # 24 s on the 2-core CPU
def test_functional_model_inits_and_applies_as_the_linen_model(parameterization):
  from wn_jax.models.functional import FunctionalCifarNet
  x = jax.random.normal(jax.random.key(0), (20, 12, 12, 3)) * 2 + 1
  rngs = {"params": jax.random.key(1), "noise": jax.random.key(2),
          "dropout": jax.random.key(3)}
  linen = models.CifarNet(width=4, parameterization=parameterization)
  functional = FunctionalCifarNet.like(linen)
  linen_vars = linen.init(rngs, x, train=True)
  # Under jit with a traced init_scale, as steps.initialize runs it.
  nnx_vars = jax.jit(lambda r, x, s: functional.clone(init_scale=s).init(r, x))(
      rngs, x, jnp.float32(1.0))
  assert _max_abs_diff(linen_vars, nnx_vars) < 1e-5
  keys = {"noise": rngs["noise"], "dropout": rngs["dropout"]}
  apply = lambda model: jax.jit(lambda v: model.apply(
      v, x, train=True, rngs=keys, mutable=["batch_stats"]))(linen_vars)
  (linen_logits, linen_updates), (logits, updates) = apply(linen), apply(functional)
  assert float(jnp.abs(linen_logits - logits).max()) < 1e-5
  assert jax.tree.structure(linen_updates) == jax.tree.structure(updates)
  assert _max_abs_diff(linen_updates, updates) < 1e-5


def test_data_init_refuses_a_model_without_a_layer_that_it_initialises():
  rngs = nnx.Rngs(0)
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="has no layer with a data-dependent init"):
    wnx.data_init(nnx.Linear(3, 2, rngs=rngs), x)
  # A batch norm runs in init mode but sets no scale: not enough on its own.
  with pytest.raises(ValueError, match="has no layer with a data-dependent init"):
    wnx.data_init(wnx.MeanOnlyBatchNorm(3, use_running_average=False), x)
  # A plain `normal` layer without its frozen scale is not initialised either.
  model = wnx.PlainDense(3, 2, data_init=False, rngs=rngs)
  wnx.data_init(nnx.Sequential(model, wnx.WeightNorm(nnx.Linear(2, 2, rngs=rngs), rngs=rngs)), x)
  np.testing.assert_array_equal(model.b[...], 0.0)


def test_2d_conv_layers_refuse_input_that_is_not_nhwc():
  rngs = nnx.Rngs(0)
  x = jnp.ones((2, 8, 3))
  for layer in (wnx.Conv2D(3, 4, (3, 3), rngs=rngs), wnx.PlainConv(3, 4, (3, 3), rngs=rngs)):
    with pytest.raises(ValueError, match=f"{type(layer).__name__} expects NHWC input"):
      layer(x)


# ---------------------------------------------------------------------------
# The init's edges, as the Linen layers' (tests/test_weight_norm.py).


def test_nnx_data_init_refuses_a_batch_of_one():
  layer = wnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match=r"has 1 value per unit\. Pass a batch of real"):
    wnx.data_init(layer, jnp.ones((1, 3)))


@pytest.mark.parametrize("jit", [False, True])
def test_nnx_constant_units_get_scale_one_and_are_counted(jit):
  layer = wnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  init = nnx.jit(wnx.data_init) if jit else wnx.data_init
  with pytest.warns(UserWarning, match="4 of 4 units have a variance <= 1e-08"):
    init(layer, jnp.ones((5, 3)))
    jax.effects_barrier()
  np.testing.assert_allclose(layer.g[...], np.ones(4))  # g = 1, not 1e4


def test_nnx_cifar_net_in_training_mode_asks_for_its_rngs():
  model = wnx.CifarNet(num_classes=10, width=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"draws input noise and dropout: pass rngs="):
    wnx.data_init(model, jnp.zeros((4, 16, 16, 3)), train=True)



class _UserNet(nnx.Module):
  """A user's NNX model from the public layers (not in the package)."""

  def __init__(self, rngs):
    self.conv = wnx.WeightNorm(nnx.Conv(3, 8, (3, 3), rngs=rngs), rngs=rngs)
    self.plain = wnx.PlainConv(8, 4, (3, 3), rngs=rngs)
    self.mobn = wnx.MeanOnlyBatchNorm(4, use_running_average=True)
    self.cell = wnx.LSTMCell(4, 3, peepholes=True, rngs=rngs)
    self.heads = nnx.List([wnx.WeightNorm(nnx.Linear(7, 5, rngs=rngs), rngs=rngs)])

  def __call__(self, x):
    x = self.mobn(self.plain(nnx.relu(self.conv(x)))).mean((1, 2))
    _, h = self.cell((jnp.zeros((x.shape[0], 3)),) * 2, x)
    return self.heads[0](jnp.concatenate([x, h], -1))


def test_a_user_nnx_model_folds_to_plain_kernels():
  model = _UserNet(nnx.Rngs(0))
  x = 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  model.mobn.use_running_average = False
  wnx.data_init(model, x)
  model.mobn.use_running_average = True
  model.mobn.mean.set_value(jnp.arange(4.0) * 0.1)  # a running mean away from 0
  folded = wnx.fold(model)
  names = {str(path[-1]) for path, _ in nnx.to_flat_state(nnx.state(folded))}
  assert not names & {"v", "g", "recurrent_v", "recurrent_g", "scale", "mean"}
  assert isinstance(model.conv, wnx.WeightNorm)  # the model itself is unchanged
  np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


class _SwitchNetWithACell(nnx.Module):
  """Written against the switch (a `parameterization`, a NormalizedDense)
  and with a 'wn' LSTMCell, as DRAW is on the Linen side."""

  def __init__(self, rngs):
    self.parameterization = "wn"
    self.dense = wnx.NormalizedDense(3, 4, parameterization="wn", rngs=rngs)
    self.cell = wnx.LSTMCell(4, 5, parameterization="wn", rngs=rngs)

  def __call__(self, x):
    y = self.dense(x, train=False)
    return self.cell((jnp.zeros((x.shape[0], 5)),) * 2, y)[1]


def test_a_switch_model_with_a_wn_cell_folds_every_layer():
  model = _SwitchNetWithACell(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (16, 3))
  wnx.data_init(model, x)
  folded = wnx.fold(model)
  names = {str(path[-1]) for path, _ in nnx.to_flat_state(nnx.state(folded))}
  assert not names & {"v", "g", "recurrent_v", "recurrent_g"}
  np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-6)


def test_both_wrappers_take_v_from_the_wrapped_layer_s_own_init():
  """One rule for the Linen and the NNX WeightNorm: v is the wrapped layer's
  own kernel draw (here orthogonal), b starts at 0 whatever its bias_init."""
  orthogonal = nn.initializers.orthogonal()
  ones = nn.initializers.ones
  with wn_jax.no_data_init():
    linen = wn_jax.WeightNorm(nn.Dense(4, kernel_init=orthogonal, bias_init=ones)).init(
        jax.random.key(0), jnp.ones((2, 4)))["params"]
  twin = wnx.WeightNorm(nnx.Linear(4, 4, kernel_init=orthogonal, bias_init=ones,
                                   rngs=nnx.Rngs(0)))
  for v, b in ((linen["v"], linen["b"]), (twin.v[...], twin.b[...])):
    np.testing.assert_allclose(np.asarray(v).T @ np.asarray(v), np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(b, np.zeros(4))
