"""Weight normalization, its data-dependent init, and mean-only batch norm.

Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", NIPS 2016.

A weight-normalized layer computes (paper eq. 2)

    y = phi(w . x + b),    w = g * v / ||v||,

with one scale ``g`` per output unit and the norm of ``v`` taken per output
unit over every other axis of ``v``. Autodiff through ``w`` gives the
paper's eq. 3 and 4:

    grad_g = grad_w . v / ||v||,    grad_v = (g / ||v||) M_w grad_w,
    M_w = I - w w^T / ||w||^2,

so ``grad_v`` is orthogonal to ``v`` and ``||v||`` grows under SGD.

The data-dependent init (paper section 2.2) IS ``model.init``
------------------------------------------------------------
``variables = model.init(rngs, init_batch)`` draws ``v ~ N(0, 0.05)`` and
then, for each layer, computes ``t = v . x / ||v||`` on the init batch, its
per-unit mean ``mu[t]`` and std ``sigma[t]`` over every axis but the feature
axis (batch, height, width), and sets

    g = init_scale / sigma[t],    b = -mu[t] * init_scale / sigma[t],

so the layer's pre-activation ``g t + b`` on the init batch has mean 0 and
std ``init_scale`` per unit. Flax Linen's ``init`` runs ``__call__`` once and
creates each parameter when its layer is first reached, in call order, and
the init functions here return the *data-initialised* value, so a deep model
is initialised layer by layer in ONE forward pass: every layer sees the
outputs of the already-initialised layers before it (the paper leaves this
ordering implicit; the authors' code does the same with Theano updates).
Under ``jax.jit`` with the init batch sharded over devices, ``jnp.mean`` is a
global reduction, so the statistics are those of the global batch. Inside
``shard_map``/``pmap`` set ``axis_name`` so they are averaged across devices.

With ``data_init=False`` the layers start at ``g = ||v||`` and ``b = 0``, so
``w = v`` at start (PyTorch's ``weight_norm`` does this), for ablations.

Mean-only batch norm (paper section 3)
--------------------------------------
``MeanOnlyBatchNorm`` subtracts the per-channel minibatch mean in training and
a running mean at test time, never divides by the std, then adds a learned
bias. Placed after a weight-normalized layer without bias (``use_bias=False``)
the data-dependent init sets only ``g = init_scale / sigma[t]`` and leaves the
centring to the batch norm, so the output after mean-only BN has mean 0 and
std ``init_scale`` on the init batch, as in the authors' ``mean_only_bn``.

The paper's five parameterizations (``normal``, ``wn``, ``bn``, ``mobn``,
``wn_mobn``) are built by ``NormalizedDense`` / ``NormalizedConv`` from one
config string; see ``PARAMETERIZATIONS``.

Any layer: ``WeightNorm``
-------------------------
``WeightNorm(layer)`` weight-normalizes any Linen layer whose only parameter
(besides its bias) is a kernel: nn.Dense, nn.DenseGeneral, nn.Conv of any
rank (strides, dilation, feature_group_count), nn.ConvTranspose, nn.Einsum.
It owns ``v`` (in the wrapped layer's kernel layout), ``g`` and ``b``, runs
the wrapped layer as a pure function of ``w = g v/||v||``, and normalizes
over every kernel axis but ``feature_axes`` (default: the output features).
``WNDense``, ``WNConv``, ``WNConvTranspose`` are ``WeightNorm`` of
``nn.Dense``, ``Conv2D`` (``ops.conv2d``, with the per-tap kernel gradient)
and ``nn.ConvTranspose``, sharing their scope so their parameters are
``v``, ``g``, ``b`` directly under the layer's name.

``||v|| = sqrt(sum v^2 + norm_epsilon)``, ``norm_epsilon = NORM_EPSILON =
1e-12``: an all-zero unit of ``v`` gives ``w = 0`` with finite gradients
(PyTorch's ``weight_norm`` gives NaN there), and ordinary norms are
unchanged in float32. The init's ``epsilon`` (1e-8) guards ``var[t]``.

``init_order`` ('sequential' | 'independent') chooses how the init extends
over a deep network; see ``WeightNorm``.

The modules, each importing only those listed before it:

* ``data_init``: the batch statistics and the data-dependent init's scale
  and bias that every family shares, the init orders, v's initializer;
* ``plain``: un-normalized layers: ``Conv2D`` and the ``normal``
  parameterization's ``PlainDense`` / ``PlainConv`` with a frozen scale;
* ``weight_norm``: ``WeightNorm``, the generic wrapper, and ``||v||``;
* ``wn_layers``: the named layers ``WNDense``, ``WNConv``, ``WNConvTranspose``;
* ``batch_norm``: ``MeanOnlyBatchNorm`` and the authors' ``BatchNorm``;
* ``parameterization``: the switch, ``NormalizedConv`` / ``NormalizedDense``.

Nothing in this package knows about data, optimizers or training.

Import the layers from the package (``from wn_jax.layers import WNConv,
WNDense, MeanOnlyBatchNorm``); the names in ``__all__`` are the public
surface, each the Linen twin of the same name in ``wn_jax.nnx`` where that
exists. The module paths above hold the same objects.
"""

from wn_jax.layers.batch_norm import BatchNorm, MeanOnlyBatchNorm
from wn_jax.layers.data_init import INIT_ORDERS, default_v_init, no_data_init
from wn_jax.layers.parameterization import PARAMETERIZATIONS, NormalizedConv, NormalizedDense
from wn_jax.layers.plain import Conv2D, PlainConv, PlainDense
from wn_jax.layers.recurrent import LSTMCell, fold_lstm
from wn_jax.layers.weight_norm import NORM_EPSILON, WeightNorm, default_feature_axes
from wn_jax.layers.wn_layers import WNConv, WNConvTranspose, WNDense

__all__ = [
    "BatchNorm", "Conv2D", "INIT_ORDERS", "LSTMCell", "MeanOnlyBatchNorm", "NORM_EPSILON",
    "NormalizedConv", "NormalizedDense", "PARAMETERIZATIONS", "PlainConv", "PlainDense",
    "WNConv", "WNConvTranspose", "WNDense", "WeightNorm", "default_feature_axes",
    "default_v_init", "fold_lstm", "no_data_init",
]
