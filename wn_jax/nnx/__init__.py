"""wn_jax for Flax NNX: weight normalization with the data-dependent init.

`from wn_jax import nnx as wnx`:
  wnx.WeightNorm(layer)  weight-normalizes nnx.Linear, nnx.LinearGeneral,
      nnx.Conv, nnx.ConvTranspose, nnx.Einsum (g, v, b are nnx.Params; v the
      layer's own kernel, or `v_init=wnx.default_v_init, rngs=...` for the
      paper's N(0, 0.05));
  wnx.data_init(model, init_batch)  the paper's data-dependent init, one pass;
  wnx.MeanOnlyBatchNorm, wnx.NormalizedConv / NormalizedDense (the five
      parameterizations), wnx.CifarNet (the paper's network);
  wnx.from_linen / to_linen  variables of the Linen CifarNet <-> the NNX one;
  wnx.fold  the NNX model folded into plain layers for inference;
  wnx.LSTMCell  an LSTM cell weight-normalized per gate unit (`nnx.RNN`);
  wnx.PARAMETERIZATIONS, INIT_ORDERS, NORM_EPSILON  the same objects as in
      `wn_jax.layers`.
The math is `wn_jax.ops`, shared with the Linen layers (`wn_jax.layers`); a
name here that `wn_jax.layers` also exports means the same there, in Linen.
"""

from wn_jax.nnx.batch_norm import BatchNorm, MeanOnlyBatchNorm
from wn_jax.nnx.convert import fold, from_linen, to_linen
from wn_jax.nnx.data_init import data_init
from wn_jax.nnx.models import CifarNet
from wn_jax.nnx.parameterization import NormalizedConv, NormalizedDense
from wn_jax.nnx.plain import Conv2D, Frozen, PlainConv, PlainDense
from wn_jax.nnx.recurrent import LSTMCell
from wn_jax.nnx.weight_norm import WeightNorm, default_feature_axes, default_v_init
from wn_jax.ops import NORM_EPSILON
from wn_jax.parameterizations import INIT_ORDERS, PARAMETERIZATIONS

__all__ = [
    "BatchNorm", "CifarNet", "Conv2D", "Frozen", "INIT_ORDERS", "LSTMCell", "MeanOnlyBatchNorm",
    "NORM_EPSILON", "NormalizedConv", "NormalizedDense", "PARAMETERIZATIONS", "PlainConv",
    "PlainDense", "WeightNorm", "data_init", "default_feature_axes", "default_v_init", "fold",
    "from_linen", "to_linen",
]
