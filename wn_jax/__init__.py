"""wn_jax: Weight Normalization (Salimans & Kingma, NIPS 2016) in JAX/Flax.

`wn_jax.WeightNorm` (= `wn_jax.layers.weight_norm.WeightNorm`) weight-normalizes
any Linen layer with a kernel; `wn_jax.fold` (= `wn_jax.folding.fold`) folds a
trained model into plain layers for inference and export.
"""

from wn_jax.folding import fold
from wn_jax.layers.weight_norm import WeightNorm

__all__ = ["WeightNorm", "fold"]
