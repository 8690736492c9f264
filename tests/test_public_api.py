"""The public surface: the names `wn_jax`, `wn_jax.layers` and `wn_jax.nnx` export.

A change to these lists changes what users import; update README's API
table with it.
"""

import subprocess
import sys

import pytest

import wn_jax
from wn_jax import layers, nnx

EXPORTS = {
    wn_jax: ["MeanOnlyBatchNorm", "WNConv", "WNDense", "WeightNorm", "fold", "layers", "nnx",
             "no_data_init"],
    layers: [
        "BatchNorm", "Conv2D", "INIT_ORDERS", "LSTMCell", "MeanOnlyBatchNorm", "NORM_EPSILON",
        "NormalizedConv", "NormalizedDense", "PARAMETERIZATIONS", "PlainConv", "PlainDense",
        "WNConv", "WNConvTranspose", "WNDense", "WeightNorm", "default_feature_axes",
        "default_v_init", "fold_lstm", "no_data_init",
    ],
    nnx: [
        "BatchNorm", "CifarNet", "Conv2D", "Frozen", "INIT_ORDERS", "LSTMCell",
        "MeanOnlyBatchNorm", "NORM_EPSILON", "NormalizedConv", "NormalizedDense", "PARAMETERIZATIONS", "PlainConv",
        "PlainDense", "WeightNorm", "data_init", "default_feature_axes", "default_v_init",
        "fold", "from_linen", "to_linen",
    ],
}
MODULES = pytest.mark.parametrize("module", list(EXPORTS), ids=lambda m: m.__name__)


@MODULES
def test_all_is_the_pinned_list(module):
  assert module.__all__ == EXPORTS[module]


@MODULES
def test_every_exported_name_is_an_attribute(module):
  for name in module.__all__:
    getattr(module, name)  # AttributeError names the missing one


def test_readme_imports():
  from wn_jax.layers import MeanOnlyBatchNorm, WeightNorm, WNConv, WNDense
  assert (layers.WNDense, layers.WNConv, layers.MeanOnlyBatchNorm, layers.WeightNorm) == (
      WNDense, WNConv, MeanOnlyBatchNorm, WeightNorm)


def test_short_and_module_paths_are_the_same_objects():
  from wn_jax.layers import batch_norm, folding, parameterization, plain, weight_norm, wn_layers
  from wn_jax.nnx import weight_norm as nnx_weight_norm
  assert wn_jax.WeightNorm is layers.WeightNorm is weight_norm.WeightNorm
  assert wn_jax.WNConv is layers.WNConv is wn_layers.WNConv
  assert wn_jax.MeanOnlyBatchNorm is layers.MeanOnlyBatchNorm is batch_norm.MeanOnlyBatchNorm
  assert wn_jax.fold is folding.fold
  assert layers.PlainConv is plain.PlainConv
  assert nnx.PARAMETERIZATIONS is layers.PARAMETERIZATIONS is parameterization.PARAMETERIZATIONS
  assert nnx.INIT_ORDERS is layers.INIT_ORDERS
  assert nnx.NORM_EPSILON == layers.NORM_EPSILON == 1e-12
  assert nnx.WeightNorm is nnx_weight_norm.WeightNorm
  assert nnx.WeightNorm is not layers.WeightNorm  # twins, one per API


# A fresh process each (1 s of imports): one order in the fast tier.
@pytest.mark.parametrize("imports", [
    "import wn_jax.nnx; import wn_jax.layers.batch_norm; from wn_jax import layers",
    *(pytest.param(imports, marks=pytest.mark.slow) for imports in [
        "import wn_jax.layers.batch_norm; import wn_jax.nnx; from wn_jax import layers",
        "from wn_jax.layers.wn_layers import WNConv; from wn_jax import layers",
        "from wn_jax.nnx.convert import fold; from wn_jax import layers",
        "import wn_jax.layers.folding; from wn_jax import layers",
    ]),
])
def test_no_import_cycle_in_any_order(imports):
  """Each import order, in a fresh process (the package imports its parts)."""
  check = f"{imports}; layers.WNDense; import wn_jax; wn_jax.nnx.WeightNorm; wn_jax.WNConv"
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
