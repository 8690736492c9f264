"""The weight-normalized LSTM cells (Linen and NNX): the start as the plain
cell, eq. 3's orthogonal gradient per gate unit, separate vs joint scales,
folding, the refusal of the data-dependent init, and the scans."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from wn_jax import layers
from wn_jax import nnx as wnx
from wn_jax.rnn_ops import lstm_kernels

IN, H, B, T = 5, 6, 3, 7
OPTIONS = list(itertools.product(("separate", "joint"), (False, True)))


def _sequence(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, T, IN))


def _scan(cell, params, x):
  """(final carry, outputs [B, T, H]) of nn.RNN over x."""
  return nn.RNN(cell, return_carry=True).apply({"params": {"cell": params}}, x)


@pytest.mark.parametrize("normalization, peepholes", OPTIONS)
def test_with_g_at_the_norm_of_v_the_cell_is_the_plain_cell_with_kernel_v(normalization,
                                                                          peepholes):
  x = _sequence()
  cell = layers.LSTMCell(H, normalization=normalization, peepholes=peepholes)
  params = nn.RNN(cell).init(jax.random.key(1), x)["params"]["cell"]
  plain = dict(params, kernel=params["v"], recurrent_kernel=params["recurrent_v"])
  for name in ("v", "recurrent_v", "g", "recurrent_g"):
    plain.pop(name, None)
  (c, h), y = _scan(cell, params, x)
  (c0, h0), y0 = _scan(layers.LSTMCell(H, parameterization="normal", peepholes=peepholes),
                       plain, x)
  for a, b in ((c, c0), (h, h0), (y, y0)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(jnp.std(y)) > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("normalization", ["separate", "joint"])
def test_the_gradient_of_each_gate_unit_s_v_is_orthogonal_to_it(normalization):
  x = _sequence()
  cell = layers.LSTMCell(H, normalization=normalization, peepholes=True)
  params = nn.RNN(cell).init(jax.random.key(1), x)["params"]["cell"]
  params = dict(params, g=params["g"] * 1.7)  # away from the start

  def loss(p):
    return jnp.sum(jnp.sin(3 * _scan(cell, p, x)[1]))

  grads = jax.grad(loss)(params)
  if normalization == "joint":
    columns = [(jnp.concatenate([params["v"], params["recurrent_v"]]),
                jnp.concatenate([grads["v"], grads["recurrent_v"]]))]
  else:
    columns = [(params["v"], grads["v"]), (params["recurrent_v"], grads["recurrent_v"])]
  for v, grad_v in columns:
    cosine = jnp.sum(v * grad_v, 0) / (jnp.linalg.norm(v, axis=0)
                                       * jnp.linalg.norm(grad_v, axis=0))
    assert v.shape[-1] == 4 * H  # one column per unit of each of the 4 gates
    np.testing.assert_allclose(cosine, 0.0, atol=1e-4)
    assert float(jnp.min(jnp.linalg.norm(grad_v, axis=0))) > 0


def test_separate_and_joint_normalization_give_the_documented_scales():
  x = _sequence()
  shapes = {}
  for normalization in ("separate", "joint"):
    params = nn.RNN(layers.LSTMCell(H, normalization=normalization)).init(
        jax.random.key(1), x)["params"]["cell"]
    shapes[normalization] = {k: v.shape for k, v in params.items()}
  assert shapes["separate"] == {"v": (IN, 4 * H), "recurrent_v": (H, 4 * H),
                                "g": (4 * H,), "recurrent_g": (4 * H,), "bias": (4 * H,)}
  assert shapes["joint"] == {"v": (IN, 4 * H), "recurrent_v": (H, 4 * H), "g": (4 * H,),
                             "bias": (4 * H,)}


@pytest.mark.parametrize("normalization", ["separate", "joint"])
def test_g_start_one_gives_unit_norm_columns(normalization):
  x = _sequence()
  params = nn.RNN(layers.LSTMCell(H, normalization=normalization, g_start="one")).init(
      jax.random.key(1), x)["params"]["cell"]
  w_x, w_h = lstm_kernels(params["v"], params["recurrent_v"], params["g"],
                          params.get("recurrent_g"), normalization)
  if normalization == "joint":
    norms = jnp.linalg.norm(jnp.concatenate([w_x, w_h]), axis=0)
  else:
    norms = jnp.concatenate([jnp.linalg.norm(w_x, axis=0), jnp.linalg.norm(w_h, axis=0)])
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


@pytest.mark.parametrize("normalization, peepholes", OPTIONS)
def test_a_folded_cell_computes_what_the_trained_one_does(normalization, peepholes):
  x = _sequence()
  cell = layers.LSTMCell(H, normalization=normalization, peepholes=peepholes)
  params = nn.RNN(cell).init(jax.random.key(1), x)["params"]["cell"]
  params = jax.tree.map(lambda p: p * (1 + 0.3 * jnp.cos(jnp.arange(p.size).reshape(p.shape))),
                        params)  # "trained": g no longer ||v||
  folded = layers.fold_lstm(params)  # the normalization read from the params
  other = "joint" if normalization == "separate" else "separate"
  with pytest.raises(ValueError, match=f"normalization='{other}', but the params are a "
                                       f"'{normalization}' cell"):
    layers.fold_lstm(params, other)
  for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(layers.fold_lstm(params,
                                                                            normalization))):
    np.testing.assert_array_equal(a, b)
  assert set(folded) == {"kernel", "recurrent_kernel", "bias"} | (
      {"peephole_input", "peephole_forget", "peephole_output"} if peepholes else set())
  plain = layers.LSTMCell(H, parameterization="normal", peepholes=peepholes)
  for a, b in zip(jax.tree.leaves(_scan(cell, params, x)),
                  jax.tree.leaves(_scan(plain, folded, x))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_data_dependent_init_and_unknown_options_are_refused():
  x = _sequence()
  with pytest.raises(ValueError, match="LSTMCell has no data-dependent init"):
    nn.RNN(layers.LSTMCell(H, data_init=True)).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="LSTMCell has no data-dependent init"):
    wnx.LSTMCell(IN, H, data_init=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="normalization must be one of"):
    nn.RNN(layers.LSTMCell(H, normalization="stacked")).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="g_start must be one of"):
    wnx.LSTMCell(IN, H, g_start="zero", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="parameterization must be one of"):
    wnx.LSTMCell(IN, H, parameterization="bn", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("normalization, peepholes", OPTIONS)
def test_the_nnx_cell_under_nnx_rnn_equals_the_linen_cell(normalization, peepholes):
  x = _sequence()
  cell = wnx.LSTMCell(IN, H, normalization=normalization, peepholes=peepholes,
                      rngs=nnx.Rngs(0))
  y = nnx.RNN(cell)(x)
  params = {str(path[0]): value.get_value()
            for path, value in nnx.to_flat_state(nnx.state(cell, nnx.Param))}
  linen = layers.LSTMCell(H, normalization=normalization, peepholes=peepholes)
  np.testing.assert_allclose(y, _scan(linen, params, x)[1], rtol=1e-6, atol=1e-7)
  # ... and its scales start at ||v||, as the Linen cell's.
  if normalization == "separate":
    np.testing.assert_allclose(params["g"], jnp.linalg.norm(params["v"], axis=0), rtol=1e-6)
  # Folding works on the NNX cell's params too.
  plain = layers.LSTMCell(H, parameterization="normal", peepholes=peepholes)
  np.testing.assert_allclose(_scan(plain, layers.fold_lstm(params, normalization), x)[1], y,
                             rtol=1e-5, atol=1e-6)


def test_the_nnx_cell_takes_flax_s_hidden_features():
  from wn_jax import nnx as wnx
  a = wnx.LSTMCell(in_features=3, hidden_features=5, rngs=nnx.Rngs(0))
  b = wnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
  assert a.features == 5
  np.testing.assert_array_equal(a.v[...], b.v[...])
  with pytest.raises(TypeError, match="takes the hidden size once"):
    wnx.LSTMCell(3, 5, hidden_features=5, rngs=nnx.Rngs(0))
