r"""When is weight norm batch norm? Dense vs conv layers on whitened CIFAR-10.

    python analysis/wn_vs_bn.py --data /tmp/whitened.npz

For a unit with direction v, WN divides its pre-activation x.v by ||v||,
BN by the batch std of x.v = ||v|| r, where

    r = std over the batch (and positions) of t = x . v/||v||.

WN is BN (up to the learned g, b) exactly when r = 1 and mean[t] = 0 for
every unit, whatever v is: for a dense layer on whitened input (identity
covariance) that holds for every v, so it holds throughout training. For a
conv layer t is a product with image PATCHES, so r^2 = v^ C v^ with C the
patch covariance. This script measures r on ZCA-whitened CIFAR-10 (the
cache of `analysis/whitened_cifar.py`):

1. covariance spectra: flattened images (the dense layer's input) and 3x3x3
   patches (interior positions; the conv layer's input);
2. r for 96 random directions v (every direction matters, since training
   moves v): dense on the flattened images, 3x3 conv (SAME) on the images,
   and the second conv of the paper network (3x3 on the first layer's
   leaky-ReLU output after the data-dependent init);
3. training: a WN logistic regression (dense 3072 -> 10) and a WN conv net
   (3x3 conv 96, leaky ReLU, global mean pool, WN dense 10), data-initialised
   on 500 images, then Adam (lr 1e-3, batch 100); r of the first layer's
   units on a held-out batch of 500 after 0, 25, 50, 100 steps.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from wn_jax.layers import wn_layers


def spectrum(rows):
  rows = rows - rows.mean(0)
  eig = np.linalg.eigvalsh(rows.T @ rows / len(rows))
  return eig.min(), np.median(eig), eig.max(), np.trace(rows.T @ rows / len(rows)) / rows.shape[1]


def patches(images, k=3):
  n, h, w, c = images.shape
  cols = [images[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)]
  return np.stack(cols, axis=3).reshape(-1, k * k * c)


def r_of(t):
  """r per unit: std over every axis but the last."""
  t = np.asarray(t, np.float64)
  return t.reshape(-1, t.shape[-1]).std(0)


def fmt(r):
  return f"{r.mean():.3f} ({r.min():.3f}..{r.max():.3f})"


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = wn_layers.WNConv(96, (3, 3), name="conv")(x)
    h = jnp.maximum(h, 0.1 * h).mean((1, 2))
    return wn_layers.WNDense(10, name="dense")(h)


class Logistic(nn.Module):
  @nn.compact
  def __call__(self, x):
    return wn_layers.WNDense(10, name="dense")(x.reshape(len(x), -1))


def first_layer_r(params, x, name):
  v = params[name]["v"]
  unit_v = v / jnp.sqrt(jnp.sum(v ** 2, axis=tuple(range(v.ndim - 1))))
  if v.ndim == 2:
    return r_of(x.reshape(len(x), -1) @ unit_v)
  return r_of(jax.lax.conv_general_dilated(x, unit_v, (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))


def train_and_track(model, name, images, labels, steps=(0, 25, 50, 100)):
  init, held_out, train_x, train_y = images[:500], images[500:1000], images[1000:], labels[1000:]
  params = model.init(jax.random.key(0), init)["params"]
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p}, x), y).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, value

  out = []
  for i in range(max(steps) + 1):
    if i in steps:
      out.append((i, first_layer_r(params, held_out, name)))
    if i == max(steps):
      break
    lo = (i * 100) % (len(train_x) - 100)
    params, opt, _ = step(params, opt, train_x[lo:lo + 100], train_y[lo:lo + 100])
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  args = parser.parse_args()
  data = np.load(args.data)
  images, labels = data["images"], data["labels"]
  x = images[:500]
  print(f"{len(images)} ZCA-whitened CIFAR-10 training images (regularisation 1e-5)\n")

  flat = images.reshape(len(images), -1).astype(np.float64)
  patch_rows = patches(images[:1000].astype(np.float64))
  print("| input | dims | eigenvalues of the covariance: min | median | max | mean (trace/d) |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, rows in (("flattened image (dense)", flat), ("3x3x3 patch (conv)", patch_rows)):
    lo, med, hi, mean = spectrum(rows)
    print(f"| {name} | {rows.shape[1]} | {lo:.3g} | {med:.3g} | {hi:.3g} | {mean:.3f} |")

  rng = np.random.default_rng(0)
  v_dense = rng.standard_normal((3072, 96))
  v_dense /= np.linalg.norm(v_dense, axis=0)
  v_conv = rng.standard_normal((27, 96))
  v_conv /= np.linalg.norm(v_conv, axis=0)
  batches = [images[i:i + 500] for i in range(0, 2000, 500)]
  print("\nr = std of x.v/||v|| per unit, 96 random directions; mean (min..max) over units;"
        " BN = WN needs r = 1 for all\n")
  print("| layer | batch 1 | batch 2 | batch 3 | batch 4 |")
  print("|---|---|---|---|---|")
  print("| dense on flattened images | " + " | ".join(
      fmt(r_of(b.reshape(len(b), -1) @ v_dense)) for b in batches) + " |")
  conv = lambda b, w: jax.lax.conv_general_dilated(
      jnp.asarray(b), jnp.asarray(w.reshape(3, 3, 3, 96), jnp.float32), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  print("| conv 3x3 SAME on images | " + " | ".join(
      fmt(r_of(conv(b, v_conv))) for b in batches) + " |")
  conv_valid = lambda b, w: jax.lax.conv_general_dilated(
      jnp.asarray(b), jnp.asarray(w.reshape(3, 3, 3, 96), jnp.float32), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  print("| conv 3x3 VALID on images | " + " | ".join(
      fmt(r_of(conv_valid(b, v_conv))) for b in batches) + " |")
  # Second conv of the paper network, on the data-initialised first layer's output.
  first = wn_layers.WNConv(96, (3, 3))
  first_vars = first.init(jax.random.key(1), jnp.asarray(x))
  v2 = rng.standard_normal((3, 3, 96, 96)).astype(np.float32)
  v2 /= np.linalg.norm(v2.reshape(-1, 96), axis=0)
  def second(b):
    h = first.apply(first_vars, jnp.asarray(b))
    h = jnp.maximum(h, 0.1 * h)
    return jax.lax.conv_general_dilated(h, jnp.asarray(v2), (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  print("| 2nd conv (3x3 on lReLU of data-initialised conv 1) | " + " | ".join(
      fmt(r_of(second(b))) for b in batches) + " |")

  print("\nTraining (Adam 1e-3, batch 100): r of the first layer's units on a held-out batch\n")
  print("| model | step | r, mean (min..max) | max |r - 1| |")
  print("|---|---:|---|---:|")
  imgs, labs = jnp.asarray(images), jnp.asarray(labels)
  for label, model, name in (("WN logistic regression (dense)", Logistic(), "dense"),
                             ("WN conv net (first conv)", ConvNet(), "conv")):
    for step, r in train_and_track(model, name, imgs, labs):
      print(f"| {label} | {step} | {fmt(r)} | {np.abs(r - 1).max():.3f} |", flush=True)


if __name__ == "__main__":
  main()
