"""Networks written against the parameterization switch
(`wn_jax.layers.parameterization`): one definition serves every
parameterization; the config string `model.parameterization` picks one.

`CifarNet` (section 5.1, `cifar`) and `VAE` (section 5.2, `vae`).
"""

from wn_jax.models.cifar import CifarNet
from wn_jax.models.vae import VAE

__all__ = ["VAE", "CifarNet"]
