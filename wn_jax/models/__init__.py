"""Networks written against the parameterization switch
(`wn_jax.layers.parameterization`): one definition serves every
parameterization; the config string `model.parameterization` picks one.

`CifarNet` (section 5.1, `cifar`), `VAE` (section 5.2, `vae`), `DRAW`
(section 5.3, `draw`, with its attention in `draw_attention`) and
`QNetwork` (section 5.4, `dqn`); `functional.FunctionalCifarNet` is the NNX
`CifarNet` behind Linen's functional interface (`model.api='nnx'`).
"""

from wn_jax.models.cifar import CifarNet
from wn_jax.models.dqn import QNetwork
from wn_jax.models.draw import DRAW
from wn_jax.models.vae import VAE

__all__ = ["DRAW", "VAE", "CifarNet", "QNetwork"]
