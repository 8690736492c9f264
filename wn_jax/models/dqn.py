"""Q-networks of the DQN experiment (section 5.4), written against the
parameterization switch (../shared/DQN_RECIPE.md).

`QNetwork` with `torso='nature'`: Mnih et al. (2015) as in spragunr/
deep_q_rl (`nature_dnn`): conv 32 8x8 stride 4, conv 64 4x4 stride 2, conv
64 3x3 stride 1 (all VALID), dense 512, a linear output per action, ReLU;
input 84x84x4 uint8 frames divided by 255. `torso='minatar'`: MinAtar's
DQN (kenjyoung/MinAtar `examples/dqn.py`): conv 16 3x3 stride 1 VALID,
dense 128, the output; input the 0/1 planes as they are.

Every layer goes through `NormalizedConv` / `NormalizedDense`:
  'normal'  deep_q_rl's init: weights uniform on +-sqrt(3 / fan_in)
            (Lasagne `HeUniform()` at gain 1) and biases 0.1
            (`dqn_bias_init` sets them after `init`); with `data_init` the
            paper's data-dependent init instead (the CIFAR code's baseline).
  'wn'      v ~ N(0, 0.05) and the data-dependent init (paper section 3;
            section 5.4: "easy to apply"), on the states the caller passes
            to `init`.
  'bn'      batch norm after every hidden layer (the paper's negative
            claim); `train=True` normalizes with the batch's statistics and
            updates the running averages, `train=False` uses the running
            averages.
The output layer (Q-values) gets the parameterization without its batch
norm: `bn` and `mobn` -> `normal`, `wn_mobn` -> `wn` (normalizing Q-values
over a minibatch would fix their mean and scale, which TD learning must
move).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax.layers.parameterization import (
  NormalizedConv,
  NormalizedDense,
  check_parameterization,
)

Array = jax.Array

TORSOS = {
    # (features, kernel, stride) of each conv; then the dense width.
    "nature": (((32, 8, 4), (64, 4, 2), (64, 3, 1)), 512),
    "minatar": (((16, 3, 1),), 128),
}
OUTPUT_PARAMETERIZATION = {"bn": "normal", "mobn": "normal", "wn_mobn": "wn"}
DQN_BIAS = 0.1  # deep_q_rl's bias init (Lasagne Constant(.1))
# deep_q_rl's weights: Lasagne HeUniform(gain=1): U(+-sqrt(3 / fan_in)).
DQN_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class QNetwork(nn.Module):
  """Q(s, .) for every action: observations [B, H, W, C] -> [B, num_actions].

  Attributes:
    num_actions: the output width.
    torso: 'nature' (Atari, uint8 frames / 255) or 'minatar' (0/1 planes).
    parameterization, data_init, init_scale: the switch's (see the module
      docstring); `data_init` runs the data-dependent init in `init`.
    bn_momentum, bn_epsilon: the batch norm's.
    conv_weight_grad: 'xla' or 'per_tap' (`wn_jax.ops.conv2d`; the same
      function, faster kernel gradients on XLA:CPU).
  """
  num_actions: int
  torso: str = "minatar"
  parameterization: str = "wn"
  data_init: bool = True
  init_scale: float = 1.0
  init_order: str = "sequential"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  conv_weight_grad: str = "xla"

  def __post_init__(self):
    check_parameterization(self.parameterization, folded=True)
    if self.torso not in TORSOS:
      raise ValueError(f"torso must be one of {tuple(TORSOS)}, got {self.torso!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, observations: Array, *, train: bool) -> Array:
    x = observations.astype(jnp.float32)
    if self.torso == "nature":
      x = x / 255.0
    kernel_init = DQN_KERNEL_INIT if self.parameterization == "normal" else None
    kwargs = dict(parameterization=self.parameterization, data_init=self.data_init,
                  init_scale=self.init_scale, init_order=self.init_order,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  kernel_init=kernel_init)
    convs, width = TORSOS[self.torso]
    for features, kernel, stride in convs:
      x = NormalizedConv(features, (kernel, kernel), strides=(stride, stride),
                         padding="VALID", conv_weight_grad=self.conv_weight_grad,
                         **kwargs)(x, train=train)
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(NormalizedDense(width, **kwargs)(x, train=train))
    output = OUTPUT_PARAMETERIZATION.get(self.parameterization, self.parameterization)
    head_kwargs = dict(kwargs, parameterization=output,
                       data_init=self.data_init and self.parameterization != "bn",
                       kernel_init=DQN_KERNEL_INIT if output == "normal" else None)
    return NormalizedDense(self.num_actions, **head_kwargs)(x, train=train)


def dqn_bias_init(params: Any, value: float = DQN_BIAS) -> Any:
  """`params` with every bias `b` set to `value` (deep_q_rl's 0.1)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.full_like(p, value) if path[-1].key == "b" else p, params)
