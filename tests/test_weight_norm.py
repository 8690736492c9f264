"""Tests of `wn_jax.WeightNorm`: weight norm of any Linen layer with a kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import wn_jax
from wn_jax.layers import batch_norm, weight_norm
from wn_jax.layers.data_init import default_v_init

RTOL = ATOL = 1e-5


def _w(v, g, feature_axes):
  """w = g v/||v|| computed here, independently: norm over the other axes."""
  axes = tuple(a % v.ndim for a in feature_axes)
  reduce = tuple(a for a in range(v.ndim) if a not in axes)
  norm = np.sqrt(np.sum(np.asarray(v, np.float64) ** 2, axis=reduce, keepdims=True))
  shape = [v.shape[a] if a in axes else 1 for a in range(v.ndim)]
  return (np.asarray(g, np.float64).reshape(shape) * v / norm).astype(np.float32)


# (name, layer, input shape, feature axes of the kernel, the wrapped layer's
# parameters given kernel w and bias b)
CASES = {
    "dense": (lambda: nn.Dense(4), (6, 5), (-1,)),
    "dense_general_2_out_axes": (lambda: nn.DenseGeneral((2, 3)), (6, 5), (-2, -1)),
    "conv1d_strided_dilated": (
        lambda: nn.Conv(6, (3,), strides=2, kernel_dilation=2, padding="SAME"),
        (3, 11, 4), (-1,)),
    "conv2d_grouped": (
        lambda: nn.Conv(6, (3, 3), feature_group_count=2, strides=(2, 1)),
        (2, 7, 8, 4), (-1,)),
    "conv3d": (lambda: nn.Conv(5, (2, 3, 2)), (2, 4, 5, 4, 3), (-1,)),
    "conv_transpose": (lambda: nn.ConvTranspose(5, (3, 3), strides=(2, 2)),
                       (2, 5, 4, 3), (-1,)),
    "conv_transpose_transpose_kernel": (
        lambda: nn.ConvTranspose(5, (3, 3), strides=(2, 2), transpose_kernel=True),
        (2, 5, 4, 3), (-2,)),
    "einsum_attention_projection": (
        lambda: nn.Einsum((8, 2, 3), "btd,dnh->btnh"), (2, 5, 8), (1, 2)),
}


def _input(shape, key=0):
  return 5.0 + 7.0 * jax.random.normal(jax.random.key(key), shape)


def _randomize(params, key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"v": jax.random.normal(k1, params["v"].shape),
          "g": jax.random.uniform(k2, params["g"].shape, minval=0.5, maxval=1.5),
          "b": jax.random.normal(k3, params["b"].shape)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow  # 32 s on the 2-core CPU
def test_output_equals_wrapped_layer_with_w(case):
  make_layer, shape, feature_axes = CASES[case]
  x = _input(shape)
  model = weight_norm.WeightNorm(make_layer())
  p = _randomize(model.init(jax.random.key(1), x)["params"], jax.random.key(2))
  w = _w(p["v"], p["g"], feature_axes)
  reference = make_layer().clone(use_bias=False)
  expected = reference.apply({"params": {"kernel": w}}, x) + p["b"]
  np.testing.assert_allclose(model.apply({"params": p}, x), expected,
                             rtol=RTOL, atol=ATOL)
  assert p["g"].shape == p["b"].shape == tuple(p["v"].shape[a] for a in feature_axes)


@pytest.mark.parametrize("init_scale", [1.0, 0.3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_init_standardises_every_unit(case, init_scale):
  make_layer, shape, feature_axes = CASES[case]
  x = _input((64,) + shape[1:])  # mean 5, std 7
  model = weight_norm.WeightNorm(make_layer(), init_scale=init_scale)
  variables = model.init(jax.random.key(1), x)
  y = model.apply(variables, x)
  reduce = tuple(range(y.ndim - len(feature_axes)))
  np.testing.assert_allclose(jnp.mean(y, reduce), 0.0, atol=2e-4 * init_scale)
  np.testing.assert_allclose(jnp.std(y, reduce), init_scale, rtol=1e-3)


@pytest.mark.slow  # 5 s on the 2-core CPU
def test_grouped_conv_one_g_per_output_channel():
  x = _input((4, 8, 8, 6))
  p = weight_norm.WeightNorm(nn.Conv(9, (3, 3), feature_group_count=3)).init(
      jax.random.key(0), x)["params"]
  assert p["v"].shape == (3, 3, 2, 9)
  assert p["g"].shape == p["b"].shape == (9,)


def test_user_feature_axes_dense_general():
  """DenseGeneral((2, 3)) with one g per unit of the last axis only."""
  x = _input((16, 5))
  layer = nn.DenseGeneral((2, 3))
  model = weight_norm.WeightNorm(layer, feature_axes=-1)
  p = _randomize(model.init(jax.random.key(1), x)["params"], jax.random.key(2))
  assert p["v"].shape == (5, 2, 3) and p["g"].shape == (3,)
  w = _w(p["v"], p["g"], (-1,))  # norm over (in, 2) per unit of the 3 axis
  expected = layer.clone(use_bias=False).apply({"params": {"kernel": w}}, x) + p["b"]
  np.testing.assert_allclose(model.apply({"params": p}, x), expected, rtol=RTOL, atol=ATOL)
  # The data init standardises each of the 3 units over batch and the 2 axis.
  y = model.apply(model.init(jax.random.key(1), x), x)
  np.testing.assert_allclose(jnp.std(y, (0, 1)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("case", ["dense", "conv2d_grouped", "dense_general_2_out_axes",
                                  "conv1d_strided_dilated"])
def test_without_data_init_equals_flax_weight_norm(case):
  make_layer, shape, feature_axes = CASES[case]
  x = _input(shape)
  ours = weight_norm.WeightNorm(make_layer(), data_init=False)
  p = _randomize(ours.init(jax.random.key(1), x)["params"], jax.random.key(2))

  class FlaxWN(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.WeightNorm(make_layer(), feature_axes=feature_axes)(x)

  flax_model = FlaxWN()
  flax_params = flax_model.init(jax.random.key(0), x)["params"]
  layer_name = next(k for k in flax_params if not k.startswith("WeightNorm"))
  scale_name = next(iter(flax_params["WeightNorm_0"]))
  flax_params = {layer_name: {"kernel": p["v"], "bias": p["b"]},
                 "WeightNorm_0": {scale_name: p["g"]}}
  np.testing.assert_allclose(ours.apply({"params": p}, x),
                             flax_model.apply({"params": flax_params}, x),
                             rtol=RTOL, atol=ATOL)


def test_without_data_init_starts_at_w_equals_v():
  x = _input((8, 5))
  p = weight_norm.WeightNorm(nn.Dense(3), data_init=False).init(jax.random.key(0), x)["params"]
  np.testing.assert_allclose(_w(p["v"], p["g"], (-1,)), p["v"], rtol=1e-6)
  np.testing.assert_array_equal(p["b"], 0.0)


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_v_init_default_is_the_wrapped_layers_kernel_init():
  x = _input((8, 5))
  ones = weight_norm.WeightNorm(nn.Dense(3, kernel_init=nn.initializers.ones), data_init=False)
  np.testing.assert_array_equal(ones.init(jax.random.key(0), x)["params"]["v"], 1.0)
  paper = weight_norm.WeightNorm(nn.Dense(300), v_init=default_v_init)
  v = paper.init(jax.random.key(0), _input((8, 50)))["params"]["v"]
  np.testing.assert_allclose(jnp.std(v), 0.05, rtol=0.05)


def test_exported_from_package():
  assert wn_jax.WeightNorm is weight_norm.WeightNorm


# Zero-norm safety.

def _dead_unit_grads(model, p, x):
  def loss(p):
    return jnp.sum(jnp.sin(model.apply({"params": p}, x)))
  return jax.grad(loss)(p)


@pytest.mark.parametrize("data_init", [True, False])
@pytest.mark.slow  # 3 s on the 2-core CPU
def test_all_zero_unit_of_v_gives_finite_outputs_and_gradients(data_init):
  x = _input((6, 5, 5, 3))
  model = weight_norm.WeightNorm(nn.Conv(4, (3, 3)), data_init=data_init)
  p = _randomize(model.init(jax.random.key(1), x)["params"], jax.random.key(2))
  p["v"] = p["v"].at[..., 2].set(0.0)  # a pruned unit
  y = model.apply({"params": p}, x)
  assert np.all(np.isfinite(y))
  np.testing.assert_allclose(y[..., 2], p["b"][2], rtol=1e-6)  # w = 0: only b
  grads = _dead_unit_grads(model, p, x)
  for name in ("v", "g", "b"):
    assert np.all(np.isfinite(grads[name])), name
  # Init with the dead unit already in v: finite g, b and outputs too.
  variables = model.init(jax.random.key(1), x)
  dead = jax.tree.map(lambda a: a, variables)
  dead["params"]["v"] = dead["params"]["v"].at[..., 2].set(0.0)
  ok = jax.tree.map(lambda a: np.all(np.isfinite(a)), dead)
  assert all(jax.tree.leaves(ok))


def test_zero_v_at_init_and_constant_unit_on_init_batch_are_finite():
  x = _input((16, 4))
  x = x.at[:, 0].set(3.0)  # input feature 0 constant on the init batch

  def v_init(key, shape, dtype):
    v = jax.random.normal(key, shape, dtype)
    v = v.at[:, 0].set(0.0)                 # unit 0: v all zeros
    return v.at[:, 1].set(0.0).at[0, 1].set(1.0)  # unit 1: sees only feature 0

  model = weight_norm.WeightNorm(nn.Dense(3), v_init=v_init)
  with pytest.warns(UserWarning, match="2 of 3 units have a variance"):
    variables = model.init(jax.random.key(0), x)
    jax.effects_barrier()
  y = model.apply(variables, x)
  for leaf in jax.tree.leaves(variables) + [y]:
    assert np.all(np.isfinite(leaf))
  grads = _dead_unit_grads(model, variables["params"], x)
  for name in ("v", "g", "b"):
    assert np.all(np.isfinite(grads[name])), name
  np.testing.assert_allclose(y[:, :2], 0.0, atol=1e-6)  # constant unit -> 0


def test_norm_epsilon_leaves_ordinary_norms_unchanged():
  v = 0.05 * jax.random.normal(jax.random.key(0), (3, 3, 3, 8))
  exact = np.sqrt(np.sum(np.asarray(v, np.float64) ** 2, axis=(0, 1, 2)))
  np.testing.assert_allclose(weight_norm.direction_norm(v).ravel(), exact, rtol=1e-6)


def test_torch_weight_norm_gives_nan_for_a_zero_unit():
  """Where PyTorch's weight_norm gives NaN, WeightNorm stays finite."""
  torch = pytest.importorskip("torch")
  layer = torch.nn.Linear(4, 3)
  with torch.no_grad():
    layer.weight[1].zero_()  # torch's weight is [out, in]: unit 1 dead
  wn = torch.nn.utils.parametrizations.weight_norm(layer, dim=0)
  x = torch.randn(5, 4)
  y = wn(x)
  y.sum().backward()
  assert torch.isnan(y[:, 1]).all()
  assert torch.isnan(wn.parametrizations.weight.original1.grad[1]).all()
  # Ours on the same weights and input: finite, and unit 1 outputs its bias.
  v = jnp.asarray(layer.parametrizations.weight.original1.detach().numpy().T)
  g = jnp.linalg.norm(v, axis=0)
  b = jnp.asarray(layer.bias.detach().numpy())
  p = {"v": v, "g": g, "b": b}
  model = weight_norm.WeightNorm(nn.Dense(3), data_init=False)
  xj = jnp.asarray(x.numpy())
  ours = model.apply({"params": p}, xj)
  assert np.all(np.isfinite(ours))
  np.testing.assert_allclose(ours[:, 1], b[1], rtol=1e-6)
  grads = _dead_unit_grads(model, p, xj)
  assert all(np.all(np.isfinite(grads[k])) for k in p)


# The two init orders.

class _Two(nn.Module):
  init_order: str = "sequential"

  @nn.compact
  def __call__(self, x):
    x = nn.relu(weight_norm.WeightNorm(nn.Dense(6), init_order=self.init_order)(x))
    return weight_norm.WeightNorm(nn.Conv(5, (1,)), init_order=self.init_order, init_scale=0.5)(
        x[:, None, :])


@pytest.mark.slow  # 4 s on the 2-core CPU
def test_independent_init_takes_statistics_from_the_uninitialised_network():
  x = _input((32, 4))
  p = _Two("independent").init(jax.random.key(0), x)["params"]
  first, second = p["WeightNorm_0"], p["WeightNorm_1"]
  # Layer 1 is initialised as in the sequential order.
  t1 = x @ (first["v"] / jnp.linalg.norm(first["v"], axis=0))
  np.testing.assert_allclose(first["g"], 1 / jnp.std(t1, 0), rtol=1e-4)
  # Layer 2's statistics are on relu(x v1) (w = v, no bias), not on the
  # initialised output of layer 1.
  h = nn.relu(x @ first["v"])
  v2 = second["v"][0]
  t2 = h @ (v2 / jnp.linalg.norm(v2, axis=0))
  np.testing.assert_allclose(second["g"], 0.5 / jnp.std(t2, 0), rtol=1e-4)
  np.testing.assert_allclose(second["b"], -jnp.mean(t2, 0) * second["g"], rtol=1e-4,
                             atol=1e-5)
  sequential = _Two("sequential").init(jax.random.key(0), x)["params"]
  np.testing.assert_allclose(sequential["WeightNorm_0"]["g"], first["g"])
  assert not np.allclose(sequential["WeightNorm_1"]["g"], second["g"], rtol=1e-2)


def test_unknown_init_order_is_an_error():
  with pytest.raises(ValueError, match="init_order 'backward'.*sequential, independent"):
    weight_norm.WeightNorm(nn.Dense(2), init_order="backward").init(
        jax.random.key(0), jnp.ones((2, 3)))


# Bad input.

def test_unknown_layer_needs_feature_axes():
  class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x @ self.param("kernel", nn.initializers.ones, (x.shape[-1], 2))

  x = _input((8, 3))
  with pytest.raises(ValueError, match="no default feature_axes for Odd"):
    weight_norm.WeightNorm(Odd()).init(jax.random.key(0), x)
  y = weight_norm.WeightNorm(Odd(), feature_axes=-1)
  assert y.apply(y.init(jax.random.key(0), x), x).shape == (8, 2)


def test_layer_with_other_params_is_an_error():
  with pytest.raises(ValueError, match="only variable"):
    weight_norm.WeightNorm(nn.LayerNorm(), feature_axes=-1).init(
        jax.random.key(0), jnp.ones((2, 3)))


def test_einsum_with_features_not_last_is_an_error():
  layer = nn.Einsum((8, 2, 3), "btd,dnh->bnth")
  with pytest.raises(ValueError, match="must end with the feature subscripts"):
    weight_norm.WeightNorm(layer).init(jax.random.key(0), jnp.ones((2, 5, 8)))


# Weight norm is batch norm for a dense layer on whitened input (paper 2.2).

def _whitened(key, n, d):
  """n x d batch with mean exactly 0 and (biased) covariance exactly I."""
  x = np.asarray(jax.random.normal(key, (n, d)), np.float64)
  x -= x.mean(0)
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  return jnp.asarray(u @ vt * np.sqrt(n), jnp.float32)


def _bn(y, scale, bias):
  bn = batch_norm.BatchNorm(use_running_average=False, epsilon=0.0)
  variables = {"params": {"scale": scale, "b": bias},
               "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}}
  return bn.apply(variables, y, mutable=["batch_stats"])[0]


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_weight_norm_equals_batch_norm_for_a_dense_layer_on_whitened_input():
  x = _whitened(jax.random.key(0), 64, 8)
  model = weight_norm.WeightNorm(nn.Dense(5), epsilon=0.0)
  variables = model.init(jax.random.key(1), x)
  v = variables["params"]["v"]
  # After the data init: WN's pre-activation is BN's output (scale 1, bias 0).
  np.testing.assert_allclose(model.apply(variables, x), _bn(x @ v, jnp.ones(5), jnp.zeros(5)),
                             rtol=1e-5, atol=1e-5)
  # And for ANY v, g, b (wherever training takes them): WN = BN(scale g, bias b),
  # because std[x . v] = ||v|| and mean[x . v] = 0 on whitened input.
  p = _randomize(variables["params"], jax.random.key(2))
  np.testing.assert_allclose(model.apply({"params": p}, x),
                             _bn(x @ p["v"], p["g"], p["b"]), rtol=1e-5, atol=1e-5)
  # Not so on correlated input: the equality needs the whitening.
  mix = jax.random.normal(jax.random.key(3), (8, 8))
  correlated = x @ mix
  assert not np.allclose(model.apply({"params": p}, correlated),
                         _bn(correlated @ p["v"], p["g"], p["b"]), rtol=1e-2, atol=1e-2)


@pytest.mark.slow  # 3 s on the 2-core CPU
def test_conv_weight_norm_is_batch_norm_only_without_padding_on_whitened_images():
  """Images whose whole pixel vector is whitened: every VALID patch is a
  sub-vector, so its covariance is I and WN = BN for any v; SAME padding
  puts zeros into the border patches, whose variance is then below ||v||^2,
  and WN != BN."""
  images = _whitened(jax.random.key(0), 256, 36).reshape(256, 6, 6, 1)
  for padding, equal in (("VALID", True), ("SAME", False)):
    model = weight_norm.WeightNorm(nn.Conv(4, (3, 3), padding=padding), epsilon=0.0)
    p = _randomize(model.init(jax.random.key(1), images)["params"], jax.random.key(2))
    y_bn = _bn(nn.Conv(4, (3, 3), padding=padding, use_bias=False).apply(
        {"params": {"kernel": p["v"]}}, images), p["g"], p["b"])
    assert np.allclose(model.apply({"params": p}, images), y_bn, rtol=1e-4, atol=1e-4) == equal


def test_the_config_init_order_reaches_the_model():
  from configs import cifar
  from wn_jax.tasks import classification
  from wn_jax.trainer import config_checks

  config = cifar.get_config("wn")
  config.model.init_order = "independent"
  assert classification.create_model(config, {"num_classes": 10}).init_order == "independent"
  config.model.init_order = "backwards"
  with pytest.raises(ValueError, match="Unknown init_order 'backwards'; valid ones are"):
    config_checks.validate_config(config, num_devices=1)


@pytest.mark.parametrize("g_start", ["norm", "one"])
def test_g_start_sets_g_without_the_data_init_in_linen_and_nnx(g_start):
  from flax import nnx

  from wn_jax import nnx as wnx
  x = jnp.ones((2, 3))
  linen = wn_jax.WNDense(4, data_init=False, g_start=g_start).init(jax.random.key(0), x)
  twin = wnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), g_start=g_start,
                        rngs=nnx.Rngs(1))
  for v, g in ((linen["params"]["v"], linen["params"]["g"]), (twin.v[...], twin.g[...])):
    norm = np.sqrt(np.sum(np.square(np.asarray(v)), axis=0))
    np.testing.assert_allclose(g, norm if g_start == "norm" else np.ones(4), rtol=1e-6)
  with pytest.raises(ValueError, match="g_start must be one of"):
    wn_jax.WNDense(4, data_init=False, g_start="zero").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="g_start must be one of"):
    wnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), g_start="zero", rngs=nnx.Rngs(1))


def test_the_norm_log_has_every_g_of_an_lstm_cell():
  from wn_jax.trainer import steps
  params = wn_jax.layers.LSTMCell(3).init(jax.random.key(0), (jnp.zeros((1, 3)),) * 2,
                                          jnp.zeros((1, 2)))["params"]
  stats = steps.weight_norm_stats({"cell": params})
  assert set(stats) == {"cell/v_norm", "cell/g_over_v_norm", "cell/recurrent_v_norm",
                        "cell/recurrent_g_over_v_norm"}
  np.testing.assert_allclose(stats["cell/recurrent_g_over_v_norm"], 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------
# The init's edges: a dummy batch, a constant unit, and the init without data.


def test_a_batch_of_one_cannot_set_a_scale_and_says_what_to_do():
  for layer in (wn_jax.WNDense(4), wn_jax.WeightNorm(nn.Dense(4)),
                wn_jax.layers.PlainDense(4)):
    with pytest.raises(ValueError, match=r"has 1 value per unit\. Pass a batch of real "
                       r"examples .* wn_jax\.no_data_init\(\)"):
      layer.init(jax.random.key(0), jnp.ones((1, 3)))


@pytest.mark.parametrize("jit", [False, True])
def test_a_constant_unit_gets_scale_one_and_is_counted(jit):
  """A constant feature in the init batch: a unit that sees only it has
  variance 0; its g must not be init_scale/sqrt(epsilon) (1e4) but 1, and a
  warning counts such units. A unit that sees the varying input is set as
  usual."""
  x = np.ones((6, 3), np.float32)
  x[:, 0] = np.arange(6)  # one input varies: only units that ignore it are constant
  v = np.zeros((3, 4), np.float32)
  v[0, :2] = 1.0  # units 0, 1 see the varying input; units 2, 3 a constant one
  v[1:, 2:] = 3.0 * np.eye(2)  # ||v|| = 3: g = 1, not ||v||
  layer = wn_jax.WNDense(4, v_init=lambda *_: jnp.asarray(v))
  init = jax.jit(layer.init) if jit else layer.init
  with pytest.warns(UserWarning, match="2 of 4 units have a variance <= 1e-08"):
    g = init(jax.random.key(0), x)["params"]["g"]
    jax.effects_barrier()
  np.testing.assert_allclose(g[:2], 1 / np.std(np.arange(6)), rtol=1e-5)
  np.testing.assert_allclose(g[2:], 1.0, rtol=1e-5)
  with pytest.warns(UserWarning, match="3 of 3 units"):  # the plain layer: scale 1
    variables = wn_jax.layers.PlainDense(3).init(jax.random.key(0), jnp.ones((5, 2)))
    jax.effects_barrier()
  np.testing.assert_array_equal(variables["frozen"]["scale"], np.ones(3))


def test_no_data_init_gives_the_data_init_tree_without_data():
  from wn_jax.models import CifarNet
  model = CifarNet(num_classes=10, width=4)
  rngs = {"params": jax.random.key(0), "noise": jax.random.key(1),
          "dropout": jax.random.key(2)}
  images = jax.random.normal(jax.random.key(3), (20, 16, 16, 3))
  with_data = model.init(rngs, images, train=True)
  with wn_jax.no_data_init():
    plain = model.init(rngs, jnp.ones((1, 16, 16, 3)), train=True)
    shapes = jax.eval_shape(lambda: model.init(rngs, jnp.ones((1, 16, 16, 3)), train=True))
  assert jax.tree.structure(plain) == jax.tree.structure(with_data)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == jax.tree.map(
      lambda a: (a.shape, a.dtype), with_data)
  first = plain["params"]["NormalizedConv_0"]["linear"]
  norm = np.sqrt(np.sum(np.square(first["v"]), axis=(0, 1, 2)))
  np.testing.assert_allclose(first["g"], norm, rtol=1e-6)  # g = ||v||, b = 0
  np.testing.assert_array_equal(first["b"], np.zeros_like(first["b"]))
  # Outside the context the data init is back.
  with pytest.raises(ValueError, match="value per unit"):
    wn_jax.WNDense(2).init(jax.random.key(0), jnp.ones((1, 3)))


def test_a_wrapped_setup_style_layer_or_embed_adds_no_parameter_of_its_own():
  class SetupDense(nn.Module):  # a user layer that defines its kernel in setup()
    features: int

    def setup(self):
      self.kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, self.features))

    def __call__(self, x):
      return x @ self.kernel

  x = jnp.arange(15.0).reshape(5, 3)
  params = wn_jax.WeightNorm(SetupDense(4), feature_axes=-1).init(jax.random.key(0), x)["params"]
  assert set(params) == {"v", "g", "b"}
  embed = wn_jax.WeightNorm(nn.Embed(10, 4), kernel_name="embedding", feature_axes=-1,
                            data_init=False)
  assert set(embed.init(jax.random.key(0), jnp.arange(5))["params"]) == {"v", "g", "b"}


def test_an_nnx_layer_given_to_the_linen_wrapper_names_the_nnx_one():
  from flax import nnx
  with pytest.raises(TypeError, match="It is a Flax NNX module: wrap it with "
                                      "wn_jax.nnx.WeightNorm"):
    wn_jax.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
