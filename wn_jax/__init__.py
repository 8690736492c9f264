"""wn_jax: Weight Normalization (Salimans & Kingma, NIPS 2016) in JAX/Flax.

The Linen layers are `wn_jax.layers` (`from wn_jax.layers import WNConv`),
their NNX twins `wn_jax.nnx`; the most used are also here: `WeightNorm`
weight-normalizes any Linen layer with a kernel, `WNDense`, `WNConv` and
`MeanOnlyBatchNorm` are the paper's layers, `no_data_init` initialises a
Linen model without data (`with wn_jax.no_data_init(): model.init(...)`),
and `fold` (= `wn_jax.layers.folding.fold`) folds a trained model into plain
layers for inference and export.
"""

from wn_jax import layers, nnx
from wn_jax.layers import MeanOnlyBatchNorm, WeightNorm, WNConv, WNDense, no_data_init
from wn_jax.layers.folding import fold

__all__ = ["MeanOnlyBatchNorm", "WNConv", "WNDense", "WeightNorm", "fold", "layers", "nnx",
           "no_data_init"]
