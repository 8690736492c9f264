"""Tests of `wn_jax.fold`: trained models folded into plain layers, and export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import wn_jax
from wn_jax import layers, models
from wn_jax.layers import folding, wn_layers
from wn_jax.layers.parameterization import FOLDED

PARAMETERIZATIONS = ("normal", "wn", "bn", "mobn", "wn_mobn")


def _trained_like(parameterization, key=0):
  """A small CifarNet, initialised, then params and running stats perturbed
  as a few training steps would (so that nothing is at its init value)."""
  model = models.CifarNet(width=4, parameterization=parameterization)
  x = 1.0 + 2.0 * jax.random.normal(jax.random.key(key), (6, 16, 16, 3))
  rngs = {"params": jax.random.key(1), "noise": jax.random.key(2),
          "dropout": jax.random.key(3)}
  variables = model.init(rngs, x, train=True)
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
  new = []
  for k, leaf, path in zip(keys, leaves, paths):
    noise = jax.random.normal(k, leaf.shape)
    if "'var'" in path:    # a variance stays positive
      new.append(leaf * jnp.exp(0.5 * noise))
    elif "'mean'" in path:  # running means away from 0
      new.append(leaf + 0.5 * noise)
    else:                   # params (v, g, b, kernel, scale), frozen scales
      new.append(leaf * (1 + 0.3 * noise) + 0.05 * noise)
  return model, jax.tree.unflatten(treedef, new), x


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.slow  # 31 s on the 2-core CPU
def test_folded_model_has_the_same_eval_logits(parameterization):
  model, variables, x = _trained_like(parameterization)
  folded_model, folded = wn_jax.fold(model, variables)
  expected = model.apply(variables, x, train=False)
  assert set(folded) == {"params"}
  layer = folded["params"]["NormalizedConv_0"]["linear"]
  assert set(layer) == {"kernel", "bias"}
  assert folded_model.parameterization == FOLDED
  np.testing.assert_allclose(folded_model.apply(folded, x, train=False), expected,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["wn_mobn", "bn"])
def test_folded_model_exports_and_the_artifact_gives_the_same_logits(parameterization):
  model, variables, x = _trained_like(parameterization)
  folded_model, folded = wn_jax.fold(model, variables)
  blob = folding.export_inference(folded_model, folded, x.shape)
  restored = jax.export.deserialize(blob)
  np.testing.assert_allclose(restored.call(x), model.apply(variables, x, train=False),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_fold_layer_bn_formula():
  k = jax.random.split(jax.random.key(0), 6)
  kernel = jax.random.normal(k[0], (5, 3))
  scale, b = jax.random.normal(k[1], (3,)), jax.random.normal(k[2], (3,))
  mean, var = jax.random.normal(k[3], (3,)), jnp.exp(jax.random.normal(k[4], (3,)))
  x = jax.random.normal(k[5], (7, 5))
  out = folding.fold_layer("bn", {"kernel": kernel}, {"scale": scale, "b": b},
                           {"mean": mean, "var": var}, bn_epsilon=1e-3)
  expected = (x @ kernel - mean) / jnp.sqrt(var + 1e-3) * scale + b
  np.testing.assert_allclose(x @ out["kernel"] + out["bias"], expected, rtol=1e-5,
                             atol=1e-5)


def test_fold_rejects_what_it_cannot_fold():
  model, variables, _ = _trained_like("wn")
  folded_model, folded = wn_jax.fold(model, variables)
  with pytest.raises(ValueError, match="already folded"):
    wn_jax.fold(folded_model, folded)
  with pytest.raises(ValueError, match="fold found no layer to fold in WNDense"):
    wn_jax.fold(wn_layers.WNDense(3), {"params": {}})


# ---------------------------------------------------------------------------
# A model of the user's own, built from the public layers (not in the package).


class UserNet(nn.Module):
  """Every public layer that folds, and a BatchNorm and a user kernel that do not."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(wn_jax.WNConv(8, 3)(x))
    x = wn_jax.WeightNorm(nn.ConvTranspose(6, (3, 3), strides=(2, 2), transpose_kernel=True),
                          feature_axes=-2)(x)
    x = layers.WNConvTranspose(5, 3)(x)
    x = layers.PlainConv(4, (3, 3))(x)
    x = wn_jax.MeanOnlyBatchNorm(use_running_average=not train)(x)
    x = layers.BatchNorm(use_running_average=not train)(x)
    x = x.mean((1, 2)) @ self.param("own", nn.initializers.normal(1.0), (4, 4))
    carry = (jnp.zeros((x.shape[0], 3)),) * 2
    _, h = layers.LSTMCell(3, peepholes=True)(carry, x)
    return wn_jax.WNDense(2)(jnp.concatenate([x, h], -1))


@pytest.mark.slow  # compiles a small model three times: ~6 s on the 2-core CPU
def test_a_user_model_folds_to_plain_kernels_and_exports():
  x = 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  model = UserNet()
  variables = model.init(jax.random.key(1), x, train=True)
  variables = jax.tree.map(  # "trained": nothing at its init value
      lambda a: a * (1 + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape))) + 0.01, variables)
  folded_model, folded = wn_jax.fold(model, variables)
  names = {str(getattr(p[-1], "key", p[-1])) for p, _ in jax.tree_util.tree_leaves_with_path(
      folded["params"])}
  assert not names & {"v", "g", "recurrent_v", "recurrent_g"}
  assert "frozen" not in folded
  assert set(folded["batch_stats"]) == {"BatchNorm_0"}  # the BatchNorm is not folded
  assert set(folded["params"]["WNConv_0"]) == {"kernel", "bias"}
  assert set(folded["params"]["MeanOnlyBatchNorm_0"]) == {"b"}
  want = model.apply(variables, x)
  np.testing.assert_allclose(folded_model.apply(folded, x), want, rtol=1e-5, atol=1e-5)
  blob = folding.export_inference(folded_model, folded, x.shape, apply_kwargs={})
  np.testing.assert_allclose(jax.export.deserialize(blob).call(x), want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="already folded"):
    wn_jax.fold(folded_model, folded)


def test_fold_checks_the_feature_axes_it_read_from_the_shapes():
  """A transposed-kernel ConvTranspose with as many inputs as outputs: its
  feature axis (-2) cannot be told from v and g; fold takes the last and the
  first call says so, and feature_axes fixes it."""
  class Square(nn.Module):
    @nn.compact
    def __call__(self, x):
      return wn_jax.WeightNorm(nn.ConvTranspose(8, (3, 3), transpose_kernel=True),
                               feature_axes=-2)(x)

  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 8))
  variables = Square().init(jax.random.key(1), x)
  folded_model, folded = wn_jax.fold(Square(), variables)
  with pytest.raises(ValueError, match=r"fold took the feature axes \(3,\) for the weight-"
                                       r"normalized layer at 'WeightNorm_0'.*are \(2,\)"):
    folded_model.apply(folded, x)
  folded_model, folded = wn_jax.fold(Square(), variables, feature_axes={"WeightNorm_0": (-2,)})
  np.testing.assert_allclose(folded_model.apply(folded, x), Square().apply(variables, x),
                             rtol=1e-5, atol=1e-6)


def test_one_weight_norm_to_plain_transform_in_both_of_its_forms():
  # `plain_layer` is what fold, DRAW's and the VAE's `normal` start use: the
  # kernel g v/||v||, or v with the frozen scale g/||v|| (the same w).
  v = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
  g = jnp.array([0.5, 1.0, 2.0, 3.0])
  w = wn_jax.parameterizations.plain_layer({"v": v, "g": g, "b": jnp.ones(4)})[0]
  kept, scale = wn_jax.parameterizations.plain_layer({"v": v, "g": g}, keep_scale=True)
  np.testing.assert_allclose(w["kernel"], kept["kernel"] * scale, rtol=1e-6)
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(w["kernel"] ** 2, axis=(0, 1, 2))), g, rtol=1e-5)
  assert set(w) == {"kernel", "b"} and set(kept) == {"kernel"}
  tree = {"block": {"conv": {"v": v, "g": g}, "other": jnp.zeros(2)}}
  params, scales = wn_jax.parameterizations.plain_from_weight_norm(tree, keep_scale=True)
  np.testing.assert_array_equal(scales["block"]["conv"]["scale"], scale)
  np.testing.assert_array_equal(params["block"]["other"], jnp.zeros(2))
  with pytest.raises(ValueError, match="no weight-normalized layer"):
    wn_jax.parameterizations.plain_from_weight_norm({"dense": {"kernel": v}})
  with pytest.raises(ValueError, match="not a weight-normalized layer"):
    wn_jax.parameterizations.plain_layer({"kernel": v})


@pytest.mark.slow  # DRAW's init and two scans: ~6 s on the 2-core CPU
def test_draw_folds_to_plain_kernels_and_draws_the_same_canvas():
  # DRAW is written against the switch but has weight-normalized LSTM cells,
  # which the switch's 'folded' kind does not have: the second form.
  from configs import mnist_draw
  from wn_jax.tasks import draw

  config = mnist_draw.get_config("wn")
  config.model.update(glimpses=3, encoder_units=6, decoder_units=5, latent=2, write_n=3)
  model = draw.create_model(config, {"image_shape": (8, 8)})
  images = (np.random.default_rng(0).random((4, 8, 8)) < 0.3).astype(np.float32)
  variables = draw.init_variables(config, model, {"images": images},
                                  {"params": jax.random.key(0)})
  eps = jax.random.normal(jax.random.key(1), (3, 4, 2))
  folded_model, folded = wn_jax.fold(model, variables)
  names = {str(getattr(k, "key", k)) for path, _ in
           jax.tree_util.tree_leaves_with_path(folded) for k in path}
  assert not names & {"v", "g", "recurrent_v", "recurrent_g"}
  np.testing.assert_allclose(folded_model.apply(folded, images, eps).canvas,
                             model.apply(variables, images, eps).canvas, atol=1e-5)


@pytest.mark.slow  # the VAE's init and two applies per variant: ~5 s each on the 2-core CPU
@pytest.mark.parametrize("variant", ["wn", "normal", "normal,direct", "wn_mobn", "mobn",
                                     "wn,iaf"])
def test_the_vae_folds_to_the_same_eval_function(variant):
  from test_vae import TINY_CONFIG

  from configs import mnist_vae
  from wn_jax.tasks import vae

  config = mnist_vae.get_config(variant)
  config.model.update(TINY_CONFIG)
  model = vae.create_model(config, {"image_shape": (8, 8, 1)})
  x = jnp.asarray(np.random.default_rng(0).random((16, 8, 8, 1)) < 0.3, jnp.float32)
  rngs = {"params": jax.random.key(1), "sample": jax.random.key(2),
          "binarize": jax.random.key(3)}
  variables = vae.init_variables(config, model, {"images": (x * 255).astype(jnp.uint8)}, rngs)
  folded_model, folded = wn_jax.fold(model, variables)
  assert set(folded) == {"params"}  # no batch_stats, no frozen scale
  sample = {"sample": jax.random.key(4)}
  for a, b in zip(model.apply(variables, x - 0.5, train=False, rngs=sample),
                  folded_model.apply(folded, x - 0.5, train=False, rngs=sample)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # three Q-networks' init and applies: ~8 s on the 2-core CPU
@pytest.mark.parametrize("parameterization", ["wn", "normal", "bn"])
def test_the_dqn_folds_to_the_same_q_values(parameterization):
  # The `bn` network's head is `normal`: each layer folds as what it is.
  from wn_jax.models.dqn import QNetwork

  model = QNetwork(num_actions=6, torso="minatar", parameterization=parameterization)
  states = jax.random.uniform(jax.random.key(0), (32, 10, 10, 6))
  variables = model.init({"params": jax.random.key(1)}, states, train=True)
  folded_model, folded = wn_jax.fold(model, variables)
  assert set(folded) == {"params"}
  np.testing.assert_allclose(folded_model.apply(folded, states, train=False),
                             model.apply(variables, states, train=False), rtol=1e-5, atol=1e-5)
