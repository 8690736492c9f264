"""Tests of the weight-normalized layers, the data-dependent init, and mean-only BN."""

import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from wn_jax.layers import batch_norm, wn_layers
from wn_jax.layers.parameterization import PARAMETERIZATIONS, NormalizedConv, NormalizedDense

RTOL = 1e-5
ATOL = 1e-5


def _randomize(variables, key):
  """Replaces every param by random values (g > 0), keeping the structure."""
  leaves, treedef = jax.tree.flatten(variables["params"])
  keys = jax.random.split(key, len(leaves))
  new = [jax.random.uniform(k, l.shape, minval=0.5, maxval=1.5) if l.ndim == 1
         else jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)]
  return {**variables, "params": jax.tree.unflatten(treedef, new)}


def _w(params):
  """w = g v/||v||, the norm over every axis of v but the last (eq. 2)."""
  v = params["v"]
  norm = jnp.sqrt(jnp.sum(v**2, axis=tuple(range(v.ndim - 1))))
  return params["g"] * v / norm


# 1. Outputs equal a direct lax computation with w = g v / ||v||.

def test_wn_dense_matches_direct_computation():
  x = jax.random.normal(jax.random.key(0), (7, 5))
  layer = wn_layers.WNDense(3)
  variables = _randomize(layer.init(jax.random.key(1), x), jax.random.key(2))
  p = variables["params"]
  expected = x @ _w(p) + p["b"]
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 0), (2, 1))])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("weight_grad", ["xla", "per_tap"])
def test_wn_conv_matches_direct_computation(padding, strides, weight_grad):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  layer = wn_layers.WNConv(4, (3, 3), strides=strides, padding=padding,
                        conv_weight_grad=weight_grad)
  variables = _randomize(layer.init(jax.random.key(1), x), jax.random.key(2))
  p = variables["params"]
  expected = lax.conv_general_dilated(
      x, _w(p), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_wn_conv_transpose_matches_flax_conv_transpose(padding, strides):
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  layer = wn_layers.WNConvTranspose(4, (3, 3), strides=strides, padding=padding)
  variables = _randomize(layer.init(jax.random.key(1), x), jax.random.key(2))
  p = variables["params"]
  expected_lax = lax.conv_transpose(
      x, _w(p), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
  reference = nn.ConvTranspose(4, (3, 3), strides=strides, padding=padding)
  expected_flax = reference.apply({"params": {"kernel": _w(p), "bias": p["b"]}}, x)
  out = layer.apply(variables, x)
  np.testing.assert_allclose(out, expected_lax, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(out, expected_flax, rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # 4 s on the 2-core CPU
def test_parameter_shapes_and_layout():
  x = jnp.ones((2, 8, 8, 3))
  p = wn_layers.WNConv(5, (3, 2)).init(jax.random.key(0), x + jax.random.normal(
      jax.random.key(1), x.shape))["params"]
  assert p["v"].shape == (3, 2, 3, 5)
  assert p["g"].shape == p["b"].shape == (5,)
  assert set(p) == {"v", "g", "b"}


# 2. The data-dependent init standardises every layer's pre-activations.

class _DeepNet(nn.Module):
  """Five layers (4 convs, strided and VALID, then 2 dense) with nonlinearities
  and pooling, each built by the parameterization switch; records each
  layer's output (after the mean-only BN where there is one)."""
  parameterization: str = "wn"
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x, train=True):
    def linear(layer_cls, *args, **kw):
      y = layer_cls(*args, parameterization=self.parameterization,
                    init_scale=self.init_scale, **kw)(x, train=train)
      self.sow("intermediates", "preactivations", y)
      return y

    x = nn.relu(linear(NormalizedConv, 8, (3, 3)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.elu(linear(NormalizedConv, 12, (3, 3), padding="VALID"))
    x = jnp.tanh(linear(NormalizedConv, 10, (3, 3), strides=(2, 2)))
    x = nn.relu(linear(NormalizedConv, 6, (1, 1)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(linear(NormalizedDense, 10))
    return linear(NormalizedDense, 4)


@pytest.mark.parametrize("parameterization, init_scale", [
    ("wn", 1.0), ("wn", 0.3), ("wn_mobn", 1.0), ("wn_mobn", 0.3),
    ("normal", 0.3), ("mobn", 0.3)])
@pytest.mark.slow  # 36 s on the 2-core CPU
def test_data_dependent_init_standardises_every_layer(parameterization, init_scale):
  # An init batch far from standardised: mean 5, std 7.
  init_batch = 5.0 + 7.0 * jax.random.normal(jax.random.key(0), (64, 12, 12, 3))
  model = _DeepNet(parameterization, init_scale)
  variables = model.init(jax.random.key(1), init_batch)
  _, state = model.apply(variables, init_batch, mutable=["intermediates", "batch_stats"])
  preacts = state["intermediates"]["preactivations"]
  assert len(preacts) == 6
  for i, y in enumerate(preacts):
    axes = tuple(range(y.ndim - 1))
    np.testing.assert_allclose(
        jnp.mean(y, axes), 0.0, atol=1e-3 * init_scale, err_msg=f"layer {i} mean")
    np.testing.assert_allclose(
        jnp.std(y, axes), init_scale, rtol=1e-3, err_msg=f"layer {i} std")
  if parameterization in ("wn_mobn", "mobn"):
    # Only the scale is data-initialised; the BN bias starts at 0.
    params = variables["params"]
    assert all(set(params[name]["linear"]) <= {"v", "g", "kernel"} for name in params)
    assert all(np.all(params[name]["norm"]["b"] == 0) for name in params)


@pytest.mark.slow  # 3 s on the 2-core CPU
def test_init_statistics_are_those_of_the_formula():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (50, 6))
  layer = wn_layers.WNDense(4, init_scale=0.7)
  p = layer.init(jax.random.key(1), x)["params"]
  v = p["v"]
  t = x @ (v / jnp.linalg.norm(v, axis=0))
  sigma = jnp.std(t, axis=0)
  np.testing.assert_allclose(p["g"], 0.7 / sigma, rtol=1e-4)
  np.testing.assert_allclose(p["b"], -jnp.mean(t, axis=0) * 0.7 / sigma, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(jnp.std(p["v"]), 0.05, rtol=0.3)  # v ~ N(0, 0.05)


def test_non_data_dependent_init_starts_at_w_equals_v():
  x = 3.0 + jax.random.normal(jax.random.key(0), (10, 6))
  p = wn_layers.WNDense(4, data_init=False).init(jax.random.key(1), x)["params"]
  np.testing.assert_allclose(_w(p), p["v"], rtol=1e-6)
  np.testing.assert_array_equal(p["b"], 0.0)


# 3. Gradients: paper eq. 3 and 4, orthogonality, and the growth of ||v||.

@pytest.mark.slow  # 9 s on the 2-core CPU
def test_gradients_match_paper_equation_3():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  target = jax.random.normal(jax.random.key(1), (2, 6, 6, 5))
  layer = wn_layers.WNConv(5, (3, 3))
  p = _randomize(layer.init(jax.random.key(2), x), jax.random.key(3))["params"]

  def loss_wn(p):
    return jnp.sum((layer.apply({"params": p}, x) - target) ** 2)

  def loss_w(w):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum((y + p["b"] - target) ** 2)

  grads = jax.grad(loss_wn)(p)
  w = _w(p)
  grad_w = jax.grad(loss_w)(w)
  axes = (0, 1, 2)
  v_norm = jnp.sqrt(jnp.sum(p["v"] ** 2, axes))
  # eq. 3: grad_g = grad_w . v / ||v||
  np.testing.assert_allclose(grads["g"], jnp.sum(grad_w * p["v"], axes) / v_norm,
                             rtol=1e-4, atol=1e-4)
  # eq. 3/4: grad_v = g/||v|| M_w grad_w, M_w = I - w w^T/||w||^2
  w_sq = jnp.sum(w**2, axes)
  projected = grad_w - w * jnp.sum(w * grad_w, axes) / w_sq
  np.testing.assert_allclose(grads["v"], p["g"] / v_norm * projected, rtol=1e-4, atol=1e-4)
  # grad_v is orthogonal to v, per unit.
  cosine = jnp.sum(grads["v"] * p["v"], axes) / (
      v_norm * jnp.sqrt(jnp.sum(grads["v"] ** 2, axes)))
  np.testing.assert_allclose(cosine, 0.0, atol=1e-5)


@pytest.mark.slow  # 4 s on the 2-core CPU
def test_norm_of_v_grows_under_sgd():
  """Paper section 2.1: with grad_v orthogonal to v, ||v|| never decreases."""
  key_x, key_y, key_init = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, (128, 8))
  y = jnp.sin(x @ jax.random.normal(key_y, (8, 1)))

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.tanh(wn_layers.WNDense(16)(x))
      return wn_layers.WNDense(1)(x)

  model = MLP()
  params = model.init(key_init, x)["params"]

  @jax.jit
  def step(params):
    grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
    params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    return params, [jnp.linalg.norm(params[k]["v"], axis=0) for k in sorted(params)]

  norms = []
  for _ in range(300):
    params, n = step(params)
    norms.append(jnp.concatenate(n))
  norms = np.stack(norms)
  decreases = np.diff(norms, axis=0)
  assert np.all(decreases >= -1e-6 * norms[1:]), decreases.min()
  assert np.all(norms[-1] > norms[0])  # It really grew, for every unit.


# 4. Invariance to the scale of v.

def test_output_invariant_to_scaling_v():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  layer = wn_layers.WNConv(4, (3, 3))
  variables = _randomize(layer.init(jax.random.key(1), x), jax.random.key(2))
  scaled = jax.tree.map(lambda a: a, variables)
  scaled["params"]["v"] = variables["params"]["v"] * 37.5
  np.testing.assert_allclose(layer.apply(scaled, x), layer.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


# 5. g of the transposed conv lives on the output channels, and its data
#    init standardises the (strided, unevenly covered) output.

@pytest.mark.slow  # 3 s on the 2-core CPU
def test_conv_transpose_g_per_output_channel():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  p = wn_layers.WNConvTranspose(7, (3, 3), strides=(2, 2)).init(jax.random.key(1), x)["params"]
  assert p["v"].shape == (3, 3, 3, 7)
  assert p["g"].shape == (7,) and p["b"].shape == (7,)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_transpose_data_init_standardises_output(padding):
  x = 5.0 + 7.0 * jax.random.normal(jax.random.key(0), (16, 5, 6, 3))
  layer = wn_layers.WNConvTranspose(7, (3, 3), strides=(2, 2), padding=padding,
                                 init_scale=0.4)
  variables = layer.init(jax.random.key(1), x)
  y = layer.apply(variables, x)
  assert y.shape == ((16, 10, 12, 7) if padding == "SAME" else (16, 11, 13, 7))
  np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(jnp.std(y, (0, 1, 2)), 0.4, rtol=1e-3)


# 6. Constant init batch: every output pixel equal (VALID padding, so no
#    border pixels see zeros), variance 0: no scale to measure, so scale 1
#    and b = -t (the unit centred), with a warning.

@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_constant_init_batch_gives_finite_parameters(parameterization):
  x = jnp.full((4, 6, 6, 3), 2.0)
  layer = NormalizedConv(5, (3, 3), padding="VALID", init_scale=0.5,
                                parameterization=parameterization)
  sets_a_scale = parameterization != "bn"  # bn has no data-dependent init
  with pytest.warns(UserWarning, match="5 of 5 units") if sets_a_scale else nullcontext():
    variables = layer.init(jax.random.key(0), x, train=True)
    jax.effects_barrier()
  for leaf in jax.tree.leaves(variables):
    assert np.all(np.isfinite(leaf))
  y = layer.apply(variables, x, train=False)
  assert np.all(np.isfinite(y))
  # Every unit is constant on the batch: scale 1, not 0.5 / sqrt(1e-8) = 5e3.
  linear = variables["params"]["linear"]
  if parameterization in ("wn", "wn_mobn"):
    np.testing.assert_allclose(linear["g"], 1.0)
  elif parameterization in ("normal", "mobn"):
    np.testing.assert_allclose(variables["frozen"]["linear"]["scale"], 1.0)
  if parameterization in ("wn", "normal"):  # b = -mean(t) g: the output is 0.
    np.testing.assert_allclose(layer.apply(variables, x, train=True), 0.0, atol=1e-4)


# 7. Mean-only batch norm.

@pytest.mark.slow  # 2 s on the 2-core CPU
def test_mean_only_batch_norm_train_and_eval():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 4))
  bn = batch_norm.MeanOnlyBatchNorm(momentum=0.9)
  variables = bn.init(jax.random.key(1), x, use_running_average=False)
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # not updated by init
  variables = {**variables, "params": {"b": jnp.arange(4.0)}}

  y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  batch_mean = jnp.mean(x, axis=(0, 1, 2))
  np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), jnp.arange(4.0), atol=1e-5)
  np.testing.assert_allclose(y, x - batch_mean + jnp.arange(4.0), rtol=1e-6, atol=1e-6)
  # Not divided by the std.
  np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), jnp.std(x, axis=(0, 1, 2)), rtol=1e-5)
  # Running mean: 0.9 * old + 0.1 * batch mean.
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * batch_mean, rtol=1e-6)

  variables = {**variables, **updates}
  x_eval = jax.random.normal(jax.random.key(2), (3, 5, 5, 4))
  y_eval = bn.apply(variables, x_eval, use_running_average=True)
  np.testing.assert_allclose(y_eval, x_eval - 0.1 * batch_mean + jnp.arange(4.0), rtol=1e-6, atol=1e-6)


def test_batch_norm_follows_authors_code():
  x = 1.0 + 3.0 * jax.random.normal(jax.random.key(0), (10, 3, 3, 2))
  bn = batch_norm.BatchNorm()
  variables = bn.init(jax.random.key(1), x, use_running_average=False)
  y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-6), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-6)
  # Running variance: 0.9 * 1 + 0.1 * n/(n-1) * var, n = batch size (10).
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * 10 / 9 * var, rtol=1e-6)


def test_batch_norm_eval_uses_the_running_statistics():
  """Evaluation: (x - running mean) / sqrt(running var + eps) * scale + b,
  with the running averages of test_batch_norm_follows_authors_code, written
  out in numpy (a large epsilon, so that dropping it would show)."""
  rng = np.random.default_rng(0)
  x = (1.0 + 3.0 * rng.standard_normal((10, 3, 3, 2))).astype(np.float32)
  bn = batch_norm.BatchNorm(epsilon=0.5)
  variables = bn.init(jax.random.key(1), x, use_running_average=False)
  variables["params"] = {"scale": jnp.array([2.0, -0.5]), "b": jnp.array([0.25, 1.0])}
  _, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  variables = {**variables, **updates}
  x_eval = (4.0 + rng.standard_normal((3, 2, 2, 2))).astype(np.float32)
  y_eval = bn.apply(variables, x_eval, use_running_average=True)

  x64 = x.astype(np.float64)
  n = 10  # the batch size
  running_mean = 0.9 * 0.0 + 0.1 * x64.mean((0, 1, 2))
  running_var = 0.9 * 1.0 + 0.1 * x64.var((0, 1, 2)) * n / (n - 1)
  expected = ((x_eval - running_mean) / np.sqrt(running_var + 0.5)
              * np.array([2.0, -0.5]) + np.array([0.25, 1.0]))
  np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
  # Evaluation leaves the running statistics alone.
  _, after = bn.apply(variables, x_eval, use_running_average=True, mutable=["batch_stats"])
  for name in ("mean", "var"):
    np.testing.assert_array_equal(after["batch_stats"][name], variables["batch_stats"][name])


# The parameterization switch.

def test_parameterization_switch_builds_each_and_rejects_unknown():
  x = 2.0 + jax.random.normal(jax.random.key(0), (6, 5, 5, 3))
  expected_params = {
      "normal": {"linear": {"kernel", "b"}},
      "wn": {"linear": {"v", "g", "b"}},
      "bn": {"linear": {"kernel"}, "norm": {"scale", "b"}},
      "mobn": {"linear": {"kernel"}, "norm": {"b"}},
      "wn_mobn": {"linear": {"v", "g"}, "norm": {"b"}},
  }
  for name, expected in expected_params.items():
    variables = NormalizedConv(4, (3, 3), parameterization=name).init(
        jax.random.key(1), x, train=True)
    assert {k: set(v) for k, v in variables["params"].items()} == expected, name
    # normal and mobn carry the frozen data-initialised scale outside 'params'.
    assert ("frozen" in variables) == (name in ("normal", "mobn")), name
  with pytest.raises(ValueError, match="valid ones are normal, wn, bn, mobn, wn_mobn"):
    NormalizedConv(4, (3, 3), parameterization="weightnorm").init(
        jax.random.key(1), x, train=True)


# 8. Init with the batch sharded over 8 devices equals init on one device.

@pytest.mark.slow  # 8 devices, in a subprocess
def test_init_sharded_over_8_devices_matches_one_device():
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from wn_jax import models
      assert jax.device_count() == 8, jax.devices()
      model = models.CifarNet(width=8, parameterization='wn_mobn', input_noise=0.0,
                              dropout_rate=0.0)
      x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), (16, 16, 16, 3))
      init = jax.jit(lambda k, x: model.init(k, x, train=True))
      single = init(jax.random.key(1), jax.device_put(x, jax.devices()[0]))
      mesh = Mesh(np.array(jax.devices()), ('data',))
      x_sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
      assert len(x_sharded.sharding.device_set) == 8
      sharded = init(jax.random.key(1), x_sharded)
      # Summation order differs with the device count: measured within 7e-7
      # relative, at most 0.07 of this tolerance (jax 0.10.2).
      for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
      print('OK', len(jax.tree.leaves(single)))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK")


def test_2d_conv_layers_refuse_input_that_is_not_nhwc():
  from wn_jax.layers import plain
  x = jnp.ones((2, 8, 3))  # [batch, width, channels]: no height axis
  for layer in (plain.Conv2D(4, (3, 3)), plain.PlainConv(4, (3, 3)),
                wn_layers.WNConvTranspose(4, (3, 3))):
    with pytest.raises(ValueError, match=f"{type(layer).__name__} expects NHWC input"):
      layer.init(jax.random.key(0), x)


def test_an_int_kernel_size_works_as_in_nn_conv():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 2))
  for layer, twin in ((wn_layers.WNConv(4, 3), wn_layers.WNConv(4, (3, 3))),
                      (wn_layers.WNConvTranspose(4, 3, strides=2),
                       wn_layers.WNConvTranspose(4, (3, 3), strides=(2, 2))),
                      (NormalizedConv(4, 3, parameterization="normal"),
                       NormalizedConv(4, (3, 3), parameterization="normal"))):
    kwargs = {"train": True} if isinstance(layer, NormalizedConv) else {}
    a = layer.init(jax.random.key(1), x, **kwargs)
    b = twin.init(jax.random.key(1), x, **kwargs)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(u, w)


def test_tabulate_shows_each_wn_layer_with_its_inputs_and_outputs():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return wn_layers.WNDense(3)(nn.relu(wn_layers.WNConv(4, 3)(x)).mean((1, 2)))

  table = Net().tabulate(jax.random.key(0), jnp.ones((4, 8, 8, 2)),
                         console_kwargs={"width": 200, "force_terminal": False})
  assert "_layer" not in table and "Dense(" not in table
  rows = [line for line in table.splitlines() if "WNConv_0" in line or "WNDense_0" in line]
  assert "float32[4,8,8,2]" in rows[0] and "float32[4,8,8,4]" in rows[0]
  assert "float32[4,4]" in rows[1] and "float32[4,3]" in rows[1]
