"""The VAE task (section 5.2): the bound's pieces against closed forms, the
importance-weighted bound, the data-dependent init through the whole VAE,
the normal arm's starting function, and training through the one loop."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_records

from configs import mnist_vae
from wn_jax.layers.parameterization import NormalizedConv, NormalizedDense
from wn_jax.models.vae import VAE, depth_to_space
from wn_jax.tasks import elbo, vae
from wn_jax.trainer import train

# ---------------------------------------------------------------------------
# The bound against a linear Gaussian model, whose evidence and posterior
# are known: z ~ N(0, I_D), x | z ~ N(a z + c, s^2) per dimension (x has D
# dimensions too), so p(x) = N(x; c, a^2 + s^2) and the exact posterior is
# N(m, v) with v = s^2 / (s^2 + a^2), m = v a (x - c) / s^2.

A, C, S = 1.7, 0.3, 0.6


def _linear_gaussian(x):
  v = S**2 / (S**2 + A**2)
  mean = v * A * (x - C) / S**2
  log_evidence = jnp.sum(-0.5 * ((x - C) ** 2 / (A**2 + S**2) + math.log(2 * math.pi)
                                 + math.log(A**2 + S**2)), axis=-1)
  return mean, jnp.full_like(mean, 0.5 * math.log(v)), log_evidence


def _log_likelihood(x, z):
  return elbo.gaussian_log_density(x, A * z + C, jnp.full_like(x, math.log(S)))


def test_one_sample_bound_with_the_exact_posterior_is_the_log_evidence():
  x = jax.random.normal(jax.random.key(0), (5, 3)) * 2
  mean, log_std, log_evidence = _linear_gaussian(x)
  for k in range(3):  # any sample z gives log p(x) exactly
    z = mean + jnp.exp(log_std) * jax.random.normal(jax.random.key(k + 1), mean.shape)
    bound = _log_likelihood(x, z) - jnp.sum(elbo.sampled_kl(z, mean, log_std), -1)
    np.testing.assert_allclose(bound, log_evidence, rtol=1e-5)


def test_closed_form_kl_gives_the_log_evidence_with_the_expected_likelihood():
  x = jax.random.normal(jax.random.key(0), (5, 3)) * 2
  mean, log_std, log_evidence = _linear_gaussian(x)
  expected_log_likelihood = jnp.sum(
      -0.5 * math.log(2 * math.pi * S**2)
      - ((x - A * mean - C) ** 2 + A**2 * jnp.exp(2 * log_std)) / (2 * S**2), -1)
  bound = expected_log_likelihood - jnp.sum(elbo.gaussian_kl(mean, log_std), -1)
  np.testing.assert_allclose(bound, log_evidence, rtol=1e-5)
  # ... and the closed form KL is the sampled estimate's mean.
  z = mean + jnp.exp(log_std) * jax.random.normal(jax.random.key(1), (20000,) + mean.shape)
  np.testing.assert_allclose(jnp.mean(elbo.sampled_kl(z, mean, log_std), 0),
                             elbo.gaussian_kl(mean, log_std), atol=0.02)


@pytest.mark.slow  # 5 s cold on the 2-core CPU
def test_importance_weighted_bound_is_exact_with_the_posterior_and_tightens_otherwise():
  x = jax.random.normal(jax.random.key(0), (200, 3)) * 2
  mean, log_std, log_evidence = _linear_gaussian(x)

  def bound(q_mean, q_log_std, num_samples, key):
    eps = jax.random.normal(key, (num_samples,) + q_mean.shape)
    z = q_mean + jnp.exp(q_log_std) * eps
    prior = elbo.gaussian_log_density(z, jnp.zeros_like(z), jnp.zeros_like(z))
    log_weights = _log_likelihood(x, z) + prior - elbo.gaussian_log_density(z, q_mean,
                                                                            q_log_std)
    return elbo.importance_weighted_bound(log_weights), jnp.mean(log_weights, 0)

  exact, _ = bound(mean, log_std, 16, jax.random.key(1))
  np.testing.assert_allclose(exact, log_evidence, rtol=1e-5)
  # A worse posterior (shifted, too narrow): L_K >= the mean of its K
  # one-sample bounds for every image, its mean rises with K, never above log p(x).
  means = []
  for k in (1, 4, 32, 256):
    l_k, single = bound(mean + 0.5, log_std - 0.5, k, jax.random.key(k))
    assert np.all(l_k >= single - 1e-5)
    means.append(float(jnp.mean(l_k)))
  assert means == sorted(means), means
  assert means[-1] < float(jnp.mean(log_evidence))


def test_discretized_logistic_is_a_distribution_over_the_256_values():
  values = jnp.arange(256, dtype=jnp.float32) / 255.0
  for mean, log_scale in ((0.5, -2.0), (0.02, -4.0), (0.99, -1.0), (1.3, 0.5)):
    log_p = elbo.discretized_logistic_log_likelihood(
        jnp.full((256, 1), mean), jnp.float32(log_scale), values[:, None])
    np.testing.assert_allclose(jnp.sum(jnp.exp(log_p)), 1.0, rtol=1e-4)
  # One middle bin against the logistic CDF directly.
  sigmoid = jax.nn.sigmoid
  x, mean, scale = 100 / 255, 0.4, 0.05
  direct = math.log(sigmoid((x + 0.5 / 255 - mean) / scale) - sigmoid((x - 0.5 / 255 - mean)
                                                                       / scale))
  got = elbo.discretized_logistic_log_likelihood(jnp.full((1, 1), mean),
                                                 jnp.float32(math.log(scale)),
                                                 jnp.full((1, 1), x))
  np.testing.assert_allclose(got, [direct], rtol=1e-5)


def test_bernoulli_log_likelihood_against_the_direct_formula():
  logits = jax.random.normal(jax.random.key(0), (3, 4, 4, 1)) * 3
  x = (jax.random.uniform(jax.random.key(1), logits.shape) < 0.5).astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  direct = jnp.sum(jnp.log(jnp.where(x == 1, p, 1 - p)).reshape(3, -1), -1)
  np.testing.assert_allclose(elbo.bernoulli_log_likelihood(logits, x), direct, rtol=1e-5)


def test_free_bits_clamps_each_dimension_after_the_batch_mean():
  kl = jnp.array([[0.1, 2.0, 0.0], [0.3, 1.0, 0.0]])
  assert float(elbo.free_bits_kl(kl, 0.0)) == pytest.approx(1.7)
  # batch means 0.2, 1.5, 0.0 -> max(0.25, .) = 0.25 + 1.5 + 0.25
  assert float(elbo.free_bits_kl(kl, 0.25)) == pytest.approx(2.0)


def test_depth_to_space_moves_each_channel_block_to_its_pixel():
  x = jnp.arange(2 * 1 * 1 * 8, dtype=jnp.float32).reshape(2, 1, 1, 8)
  y = depth_to_space(x)
  assert y.shape == (2, 2, 2, 2)
  np.testing.assert_array_equal(y[0, :, :, 0], [[0, 2], [4, 6]])
  np.testing.assert_array_equal(y[0, :, :, 1], [[1, 3], [5, 7]])


# ---------------------------------------------------------------------------
# The network: the data-dependent init in one pass, the normal arm's start.

TINY_CONFIG = dict(widths=(3, 4, 4), blocks_per_stage=1, hidden=6, latent=2)
TINY = dict(image_shape=(8, 8, 1), out_channels=1, **TINY_CONFIG)


def _init_batch():
  return (jax.random.uniform(jax.random.key(0), (64, 8, 8, 1)) < 0.3).astype(jnp.float32)


def _linear_outputs(model, variables, x):
  _, state = model.apply(
      variables, x - 0.5, train=True, rngs={"sample": jax.random.key(2)},
      capture_intermediates=lambda m, name: isinstance(m, (NormalizedConv, NormalizedDense)),
      mutable=["intermediates", "batch_stats"])
  found = []
  def walk(tree, path):
    for key, value in tree.items():
      if key == "__call__":
        found.append(("/".join(path), value[0]))
      elif isinstance(value, dict):
        walk(value, path + (key,))
  walk(state["intermediates"], ())
  return found


@pytest.mark.parametrize("parameterization", [
    pytest.param("wn", marks=pytest.mark.slow),  # 12 s cold on the 2-core CPU
    pytest.param("normal", marks=pytest.mark.slow),  # 6 s cold
    pytest.param("wn_mobn", marks=pytest.mark.slow)])  # the VAE's first compile
def test_data_init_standardises_every_unit_of_the_whole_vae(parameterization):
  x = _init_batch()
  model = VAE(**TINY, parameterization=parameterization, init_scale=0.7, head_init_scale=0.2)
  variables = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x - 0.5,
                         train=True)
  outputs = _linear_outputs(model, variables, x)
  # encoder input + 3 blocks (2 with a conv shortcut: 2 + 3 + 3) + hidden +
  # head; decoder 2 dense + 3 blocks (2 + 3 + 3) + output.
  assert len(outputs) == 1 + 8 + 2 + 2 + 8 + 1, [name for name, _ in outputs]
  for name, y in outputs:
    axes = tuple(range(y.ndim - 1))
    scale = 0.2 if ("posterior_head" in name or "decoder_output" in name) else 0.7
    np.testing.assert_allclose(jnp.mean(y, axes), 0.0, atol=2e-3 * scale, err_msg=name)
    np.testing.assert_allclose(jnp.std(y, axes), scale, rtol=2e-3, err_msg=name)


def _tiny_init_setup(folder, variant):
  """The tiny VAE's config, an init batch of 32 8x8 images and the init keys."""
  config = mnist_vae.get_config(variant)
  config.data.folder = folder
  for key, value in TINY_CONFIG.items():
    config.model[key] = value
  batch = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1)),
                                 jnp.uint8)}
  rngs = {"params": jax.random.key(1), "sample": jax.random.key(2),
          "binarize": jax.random.key(3)}
  return config, batch, rngs


@pytest.mark.parametrize("wn, normal", [
    pytest.param("wn", "normal", marks=pytest.mark.slow),  # 4 s cold on the 2-core CPU
    pytest.param("wn_mobn", "mobn", marks=pytest.mark.slow)])  # the VAE's compile
def test_normal_starts_from_the_function_of_wn(tiny_mnist, wn, normal):
  config, batch, rngs = _tiny_init_setup(tiny_mnist, wn)
  info = {"image_shape": (8, 8, 1)}
  variables, outputs = {}, {}
  for parameterization in (wn, normal):
    config.model.parameterization = parameterization
    model = vae.create_model(config, info)
    variables[parameterization] = vae.init_variables(config, model, batch, rngs)
    # The variables have the structure the normal network itself creates.
    own = jax.eval_shape(lambda m=model: m.init(
        {"params": jax.random.key(0), "sample": jax.random.key(0)},
        jnp.zeros((2, 8, 8, 1)), train=True))
    assert jax.tree.structure(own) == jax.tree.structure(variables[parameterization])
    outputs[parameterization] = model.apply(
        variables[parameterization], batch["images"] / 255.0 - 0.5, train=False,
        rngs={"sample": jax.random.key(4)})
  np.testing.assert_array_equal(variables[wn]["params"]["encoder_input"]["linear"]["v"],
                                variables[normal]["params"]["encoder_input"]["linear"]["kernel"])
  for a, b in zip(outputs[wn], outputs[normal]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the VAE's init and one gradient, twice: ~10 s on the 2-core CPU
def test_the_two_readings_of_normal_start_alike_and_step_differently(tiny_mnist):
  """'scaled' and 'direct' compute the same function at step 0; after one
  Adamax step each element of w = s kernel has moved by ~0.1 lr s
  (scaled: the kernel moves by 0.1 lr, first step, no bias correction) or
  by ~0.1 lr whatever s (direct: w itself is trained)."""
  config, batch, rngs = _tiny_init_setup(tiny_mnist, "normal")
  step_rngs = {"sample": jax.random.key(5), "binarize": jax.random.key(6)}
  lr = config.optimizer.learning_rate
  outputs, moves = {}, {}
  for reading in ("scaled", "direct"):
    config.model.normal_weights = reading
    model = vae.create_model(config, {"image_shape": (8, 8, 1)})
    variables = dict(vae.init_variables(config, model, batch, rngs))
    outputs[reading] = model.apply(variables, batch["images"] / 255.0 - 0.5, train=False,
                                   rngs={"sample": jax.random.key(4)})
    params = variables.pop("params")
    grads = jax.grad(lambda p, m=model, s=variables: vae.train_loss(
        config, m, p, s, batch, step_rngs)[0])(params)
    optimizer = vae.create_optimizer(config, steps_per_epoch=1)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    layer = "encoder_input"
    scale = variables["frozen"][layer]["linear"]["scale"]
    kernel, update = params[layer]["linear"]["kernel"], updates[layer]["linear"]["kernel"]
    moves[reading] = (np.abs(np.asarray(scale * (kernel + update) - scale * kernel)),
                      np.asarray(scale), np.abs(np.asarray(grads[layer]["linear"]["kernel"])))
  for a, b in zip(outputs["scaled"], outputs["direct"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  move, scale, grad = moves["scaled"]
  assert np.std(scale) > 0.1 * np.mean(scale)  # the units' scales differ
  live = grad > 1e-5
  np.testing.assert_allclose(move[live], np.broadcast_to(0.1 * lr * scale, move.shape)[live],
                             rtol=1e-3)
  move, scale, grad = moves["direct"]
  np.testing.assert_array_equal(scale, np.ones_like(scale))
  live = grad > 1e-5
  np.testing.assert_allclose(move[live], 0.1 * lr, rtol=1e-3)


@pytest.mark.slow  # the VAE's init and six losses: ~10 s on the 2-core CPU
def test_the_objective_variants_change_the_training_loss_as_named(tiny_mnist):
  """On the built model: the default loss is -ELBO with the KL in closed form
  (the same for any posterior sample); `:free_bits` clamps each latent's KL
  at 0.25 nats, so the loss is at least recon + 0.25 per latent while the
  recorded ELBO stays the true one; `:sampled_kl` estimates the KL from
  the sample, so it changes with the sample key."""
  measured = {}
  for variant in ("wn", "wn,free_bits", "wn,sampled_kl"):
    config, batch, rngs = _tiny_init_setup(tiny_mnist, variant)
    model = vae.create_model(config, {"image_shape": (8, 8, 1)})
    variables = dict(vae.init_variables(config, model, batch, rngs))
    params = variables.pop("params")
    measured[variant] = []
    for sample in (5, 7):
      loss, (metrics, _) = vae.train_loss(config, model, params, variables, batch,
                                          {"sample": jax.random.key(sample),
                                           "binarize": jax.random.key(6)})
      measured[variant].append((float(loss), {k: float(v) for k, v in metrics.items()}))
  (loss, metrics), (_, other_sample) = measured["wn"]
  assert loss == pytest.approx(-metrics["elbo"], rel=1e-6)
  assert metrics["kl"] == pytest.approx(other_sample["kl"], rel=1e-6)
  (loss, metrics), _ = measured["wn,free_bits"]
  latents = TINY_CONFIG["latent"]
  assert metrics["kl"] < 0.25 * latents  # a fresh posterior: every latent under the floor
  assert loss == pytest.approx(metrics["recon"] + 0.25 * latents, rel=1e-5)
  assert loss > -metrics["elbo"]
  (_, metrics), (_, other_sample) = measured["wn,sampled_kl"]
  assert abs(metrics["kl"] - other_sample["kl"]) > 1e-3


@pytest.mark.slow  # 7 s on the 2-core CPU
def test_iwae_of_the_vae_never_falls_below_its_samples_mean():
  x = _init_batch()
  model = VAE(**TINY)
  variables = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x - 0.5,
                         train=True)
  config = mnist_vae.get_config()
  images = x.astype(jnp.uint8)
  bound, single = vae._iwae_batch(variables, images, jax.random.key(4), config=config,
                                  model=model, num_samples=16)
  assert bound.shape == single.shape == (64,)
  assert np.all(np.asarray(bound) >= np.asarray(single) - 1e-4)
  # E[L_K] rises with K: averaged over 64 images and 8 draws each.
  means = [np.mean([float(jnp.mean(vae._iwae_batch(
      variables, images, jax.random.key(seed), config=config, model=model,
      num_samples=k)[0])) for seed in range(8)]) for k in (1, 16, 128)]
  assert means == sorted(means), means


# ---------------------------------------------------------------------------
# Training through the one loop, on tiny MNIST files written here.


def tiny_vae_config(folder, variant="wn"):
  config = mnist_vae.get_config(variant)
  config.data.folder = folder
  config.model.widths = (3, 4, 4)
  config.model.blocks_per_stage = 1
  config.model.hidden = 6
  config.model.latent = 2
  config.num_epochs = 2
  config.batch_size = 10
  config.init_batch_size = 20
  config.eval_batch_size = 8
  config.ema_epochs = 1.0
  config.eval_every_epochs = 1
  config.pictures_every_epochs = 1
  config.eval.iwae_samples = 4
  config.eval.iwae_examples = 12
  config.eval.iwae_batch_size = 5
  config.log_every_steps = 2
  config.log_norms_every_steps = 3
  config.eval_every_steps = 4
  config.eval_subset = 10
  return config


@pytest.mark.slow  # two short runs and a resume
def test_a_vae_run_records_its_bound_and_resumes_bitwise(tiny_mnist, tmp_path):
  config = tiny_vae_config(tiny_mnist)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  records = read_records(tmp_path / "straight")
  epochs = [r for r in records if "train_elbo" in r]
  assert [r["epoch"] for r in epochs] == [1, 2]
  for r in epochs:
    for prefix in ("train", "test", "ema_test"):
      assert r[f"{prefix}_elbo"] == pytest.approx(-(r[f"{prefix}_recon"] + r[f"{prefix}_kl"]),
                                                  rel=1e-5)
      assert r[f"{prefix}_bits_per_dim"] == pytest.approx(
          -r[f"{prefix}_elbo"] / (64 * math.log(2)), rel=1e-5)
    assert r["train_loss"] == pytest.approx(-r["train_elbo"], rel=1e-6)  # no free bits
  subset = [r for r in records if "subset_test_elbo" in r]
  assert [r["step"] for r in subset] == [4, 8, 12]
  assert all("ema_subset_test_elbo" in r for r in subset)
  final = [r for r in records if "final" in r]
  assert len(final) == 1
  assert final[0]["test_iwae_k4_n12"] >= final[0]["test_elbo_sampled_kl_n12"]
  for name in ("reconstructions", "samples"):
    assert os.path.exists(tmp_path / "straight" / "pictures" / f"{name}.png")

  config_one = tiny_vae_config(tiny_mnist)
  config_one.num_epochs = 1  # "interrupted" after the first epoch's checkpoint
  train.train_and_evaluate(config_one, str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  resumed_records = read_records(tmp_path / "resumed")
  # The same records, and the final measurement of each run's own end.
  assert [r for r in resumed_records if "final" not in r] == [
      r for r in records if "final" not in r]
  assert [r["step"] for r in resumed_records if "final" in r] == [6, 12]
  assert [r for r in resumed_records if "final" in r][-1] == final[0]
  # A finished run started again measures nothing twice.
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert read_records(tmp_path / "resumed") == resumed_records


@pytest.mark.slow  # a 2-member sweep and the member alone
def test_a_member_of_a_vae_seed_sweep_equals_its_run_alone(tiny_mnist, tmp_path):
  config = tiny_vae_config(tiny_mnist)
  config.num_epochs = 1
  config.sweep.seed = (0, 1)
  swept = train.train_and_evaluate(config, str(tmp_path / "sweep"))
  alone_config = tiny_vae_config(tiny_mnist)
  alone_config.num_epochs = 1
  alone_config.seed = 1
  alone = train.train_and_evaluate(alone_config, str(tmp_path / "alone"))
  for a, b in zip(jax.tree.leaves(swept.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6)


def test_vae_config_errors_name_the_key(tiny_mnist):
  from wn_jax.trainer import config_checks
  config = tiny_vae_config(tiny_mnist)
  config.model.likelihood = "logistic"
  with pytest.raises(ValueError, match="likelihood='logistic' scores"):
    config_checks.validate_config(config, num_devices=1)
  config = tiny_vae_config(tiny_mnist)
  config.data.source = "folder"
  with pytest.raises(ValueError, match="config.data.source must be one of"):
    config_checks.validate_config(config, num_devices=1)
  config = tiny_vae_config(tiny_mnist)
  config.ema_decay = 0.9
  with pytest.raises(ValueError, match="not both"):
    config_checks.validate_config(config, num_devices=1)


# ---------------------------------------------------------------------------
# The IAF posterior: autoregressive steps whose Jacobian is triangular with
# log-determinant sum log sigma, masked kernels that stay masked.


@pytest.mark.parametrize("parameterization", [
    pytest.param("wn", marks=pytest.mark.slow),  # 5 s cold on the 2-core CPU
    pytest.param("normal", marks=pytest.mark.slow)])  # 1-5 s of compiles
def test_an_iaf_step_is_autoregressive_with_the_log_determinant_it_returns(parameterization):
  import functools

  from wn_jax.layers.parameterization import NormalizedDense
  from wn_jax.models.vae import IAFStep
  dense = functools.partial(NormalizedDense, parameterization=parameterization)
  step = IAFStep(hidden=7, gate_bias=0.5, dense=dense, head_dense=dense)
  z = jax.random.normal(jax.random.key(0), (16, 4))
  context = jax.random.normal(jax.random.key(1), (16, 3))
  variables = step.init(jax.random.key(2), z, context, train=True)
  def one(z_row, context_row):
    return step.apply(variables, z_row[None], context_row[None], train=False)
  for i in range(3):
    jacobian = jax.jacobian(lambda zr, c=context[i]: one(zr, c)[0][0])(z[i])
    # z'_d depends on z_1..z_d only; the diagonal is sigma_d.
    np.testing.assert_array_equal(np.triu(np.asarray(jacobian), k=1), 0.0)
    _, log_det = np.linalg.slogdet(np.asarray(jacobian, np.float64))
    np.testing.assert_allclose(log_det, one(z[i], context[i])[1][0], rtol=1e-5, atol=1e-5)


def test_masked_v_starts_and_stays_zero_where_masked():
  from wn_jax.layers.plain import autoregressive_mask
  from wn_jax.layers.wn_layers import WNDense
  degrees = ((1, 2, 3), (1, 1, 2, 2, 3), True)
  layer = WNDense(5, mask_degrees=degrees)
  x = jax.random.normal(jax.random.key(0), (32, 3))
  params = layer.init(jax.random.key(1), x)["params"]
  mask = autoregressive_mask(degrees)
  np.testing.assert_array_equal(np.asarray(params["v"])[mask == 0], 0.0)
  grads = jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({"params": p}, x))))(params)
  np.testing.assert_array_equal(np.asarray(grads["v"])[mask == 0], 0.0)
  # Output 1 (degree 1, strict) sees no input: it is its bias alone.
  y = layer.apply({"params": params}, x)
  np.testing.assert_allclose(y[:, :2], jnp.broadcast_to(params["b"][:2], (32, 2)), atol=1e-6)


@pytest.mark.parametrize("parameterization", [
    pytest.param("wn", marks=pytest.mark.slow),  # 5 s cold on the 2-core CPU
    pytest.param("normal", marks=pytest.mark.slow)])  # the VAE's compile
def test_the_iaf_vae_initialises_every_unit_and_normal_starts_as_wn(tiny_mnist,
                                                                     parameterization):
  x = _init_batch()
  model = VAE(**TINY, posterior="iaf", iaf_steps=2, iaf_hidden=5, iaf_context=3,
              parameterization="wn", init_scale=0.7, head_init_scale=0.2)
  variables = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x - 0.5,
                         train=True)
  outputs = _linear_outputs(model, variables, x)
  assert len(outputs) == 1 + 8 + 2 + 2 * 4 + 2 + 8 + 1
  for name, y in outputs:
    axes = tuple(range(y.ndim - 1))
    scale = 0.2 if ("posterior_head" in name or "decoder_output" in name
                    or name.endswith("flow_0/NormalizedDense_3")
                    or name.endswith("flow_1/NormalizedDense_3")) else 0.7
    live = np.asarray(jnp.std(y, axes)) > 0  # MADE's first m and s see no input
    assert live.sum() >= y.shape[-1] - 2, name
    np.testing.assert_allclose(np.asarray(jnp.std(y, axes))[live], scale, rtol=2e-3,
                               err_msg=name)
  # The normal arm from the same keys computes the same posterior and output.
  config = mnist_vae.get_config(f"{parameterization},iaf")
  config.data.folder = tiny_mnist
  for key, value in {**TINY_CONFIG, "iaf_hidden": 5, "iaf_context": 3}.items():
    config.model[key] = value
  batch = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1)),
                                 jnp.uint8)}
  rngs = {"params": jax.random.key(1), "sample": jax.random.key(2),
          "binarize": jax.random.key(3)}
  results = []
  for arm in ("wn", parameterization):
    config.model.parameterization = arm
    arm_model = vae.create_model(config, {"image_shape": (8, 8, 1)})
    arm_variables = vae.init_variables(config, arm_model, batch, rngs)
    results.append(arm_model.apply(arm_variables, batch["images"] / 255.0 - 0.5, train=False,
                                   rngs={"sample": jax.random.key(4)}))
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
