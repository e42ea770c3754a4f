"""The adversarial training step every GAN task shares (DCGAN; next pix2pix, CycleGAN,
progressive GAN): n_critic D steps, then one G step, in one pure function the loop jits.

It knows no network. A task gives pure forward functions:

* ``generator_inputs(batch, rng) -> inputs``: what G is fed for this slice of the batch
  (DCGAN: noise and labels; pix2pix: the source image);
* ``generate(g_params, g_state, inputs, train) -> (fake, g_state)``;
* ``critic(d_params, d_state, images, batch, train) -> (logits, d_state)``: D on
  ``images``, conditioned on whatever the batch slice holds (labels, a source image);
* ``real(batch)``: the real images D compares against (default ``batch["image"]``);
* ``extra_g_losses``: ``{name: fn(fake, batch, regenerate) -> scalar}``, weighted by the
  task and added to G's loss (L1 to a target, cycle consistency); ``regenerate(inputs)``
  runs G again with the parameters being differentiated (BatchNorm updates discarded);
* ``fake_pool(state, fake, rng) -> (fake, state)``: optional, what D's step sees as the
  fakes, and the state it leaves (CycleGAN: an image pool kept in ``state.extra``, so
  resume stays exact). Not given: D sees G's fresh fakes, as before.
* ``extra_d_losses``: ``{name: fn(real_logits, fake_logits, batch) -> scalar}``, weighted
  by the task and added to D's loss (ProGAN's drift 0.001 * D(x)^2); logged as ``d_<name>``.

Images and logits may be pytrees (one entry per domain, as CycleGAN's two D's): the loss
is then summed over the leaves. Penalties need a single image array.

State layout (``init_state``): ``params``/``opt_state``/``model_state`` are dicts with
"generator" and "discriminator" entries; ``extra["ema"]`` is the exponential moving
average of G's weights.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxvision import config as config_lib
from jaxvision.losses import GAN_LOSSES, gradient_penalty, r1_penalty
from jaxvision.train import state as state_lib

G, D = "generator", "discriminator"


@dataclasses.dataclass(frozen=True)
class GANOptimConfig:
    loss: str = "non_saturating"
    g_learning_rate: float = 2e-4
    d_learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    n_critic: int = 1  # D steps per G step; each on its own slice of the batch
    gp_weight: float = 0.0  # WGAN-GP gradient penalty weight (10 in Gulrajani et al.)
    r1_gamma: float = 0.0  # R1 penalty: gamma/2 * E||grad D(x)||^2 on real data
    # Lazy regularization (Karras et al. 2020, StyleGAN2's D_reg_interval): the penalties
    # above only at steps that are multiples of d_reg_interval, weighted by it; the other
    # steps skip their cost (WGAN-GP's double backprop). 1: at every step, as the papers.
    d_reg_interval: int = 1
    ema_decay: float = 0.999
    # Both learning rates decay linearly to 0 over the run's last lr_decay_steps steps
    # (CycleGAN's n_epochs_decay, counted in steps); 0 keeps them constant.
    lr_decay_steps: int = 0


# Where the train step's reductions (BatchNorm statistics, bias and weight-gradient sums) run
# on the CPU. "xla": XLA's own emitted loops (its default; every run before this option).
# "ynnpack": YNNPACK kernels as well, added to XLA's default library fusions (its dots): a
# 1.15-1.2x faster DCGAN step on the 2-core AMD EPYC here, with another summation order, so
# other bits than "xla" (each deterministic). No effect off the CPU.
CPU_REDUCTIONS = {
    "xla": None,
    "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                                                        "LIBRARY_FUSION_TYPE_REDUCE"},
}


def compiler_options(cpu_reductions: str) -> dict | None:
    """The train step's XLA compiler options for a `cpu_reductions` setting (see CPU_REDUCTIONS)."""
    if cpu_reductions not in CPU_REDUCTIONS:
        raise config_lib.ConfigError(f"Unknown cpu_reductions {cpu_reductions!r}; choose one of "
                                     f"{sorted(CPU_REDUCTIONS)}.")
    return CPU_REDUCTIONS[cpu_reductions]


def _check(cfg: GANOptimConfig):
    if cfg.loss not in GAN_LOSSES:
        raise config_lib.ConfigError(f"Unknown GAN loss {cfg.loss!r}; choose one of {sorted(GAN_LOSSES)}.")
    if cfg.n_critic < 1:
        raise config_lib.ConfigError(f"n_critic must be >= 1 (D steps per G step), got {cfg.n_critic}.")
    if cfg.d_reg_interval < 1 or (cfg.d_reg_interval > 1 and not (cfg.gp_weight or cfg.r1_gamma)):
        raise config_lib.ConfigError(f"d_reg_interval must be >= 1 (1: penalties at every step), and above 1 only with "
                                     f"a penalty to space out (gp_weight or r1_gamma); got {cfg.d_reg_interval}.")
    if cfg.lr_decay_steps < 0:
        raise config_lib.ConfigError(f"lr_decay_steps must be >= 0 (0: constant learning rates), got "
                                     f"{cfg.lr_decay_steps}.")


def learning_rate(base: float, cfg: GANOptimConfig, total_steps: int | None, updates_per_step: int = 1):
    """`base`, or the schedule that holds it and then decays linearly to 0 over the last
    `cfg.lr_decay_steps` of `total_steps` steps; in the optimizer's own update count, which
    advances `updates_per_step` times a step (D's n_critic)."""
    if not cfg.lr_decay_steps:
        return base
    if total_steps is None or cfg.lr_decay_steps > total_steps:
        raise config_lib.ConfigError(f"optim.lr_decay_steps={cfg.lr_decay_steps} needs a run of at least that many "
                                     f"steps (total_steps={total_steps}): lower it or raise total_steps.")
    return optax.linear_schedule(base, 0.0, cfg.lr_decay_steps * updates_per_step,
                                 transition_begin=(total_steps - cfg.lr_decay_steps) * updates_per_step)


def optimizers(cfg: GANOptimConfig, total_steps: int | None = None):
    """(G's, D's) Adam as `cfg` says; refuses an unknown loss before anything is built.
    `total_steps`: the run's length, needed only with `cfg.lr_decay_steps`."""
    _check(cfg)
    return (optax.adam(learning_rate(cfg.g_learning_rate, cfg, total_steps), b1=cfg.b1, b2=cfg.b2),
            optax.adam(learning_rate(cfg.d_learning_rate, cfg, total_steps, cfg.n_critic), b1=cfg.b1, b2=cfg.b2))


def init_state(g_variables, d_variables, *, g_tx, d_tx, rng) -> state_lib.TrainState:
    """Both networks' variables ({"params", "batch_stats"?}) in the layout the step uses."""
    params = {G: g_variables["params"], D: d_variables["params"]}
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={G: g_tx.init(params[G]), D: d_tx.init(params[D])},
        rng=rng,
        model_state={G: g_variables.get("batch_stats", {}), D: d_variables.get("batch_stats", {})},
        extra={"ema": params[G]},
    )


def _over_leaves(fn, *trees):
    """fn over matching leaves of `trees`, summed (a single array: just fn of it)."""
    terms = [fn(*leaves) for leaves in zip(*(jax.tree_util.tree_leaves(t) for t in trees))]
    return functools.reduce(operator.add, terms)


def _mean_sigmoid(logits):
    n = len(jax.tree_util.tree_leaves(logits))
    total = _over_leaves(lambda x: jnp.mean(jax.nn.sigmoid(x)), logits)
    return total if n == 1 else total / n


def _mean_over(grads, axis_name):
    return grads if axis_name is None else jax.lax.pmean(grads, axis_name)


def _slice(batch, part):
    return jax.tree_util.tree_map(lambda x: x[part], batch)


def make_step(cfg: GANOptimConfig, *, generate: Callable, critic: Callable, generator_inputs: Callable,
              real: Callable = lambda batch: batch["image"], extra_g_losses: Mapping[str, Callable] | None = None,
              g_tx=None, d_tx=None, axis_name: str | None = None, fake_pool: Callable | None = None,
              extra_d_losses: Mapping[str, Callable] | None = None, update_scale: Callable | None = None):
    """The pure `train_step(state, batch) -> (state, metrics)` of an adversarial task.

    The batch holds `n_critic` slices of equal size: D step i trains on slice i, the G
    step on slice 0. Logged: `d_loss`, `d_real`, `d_fake` (D(x) and D(G(z)) as sigmoid of
    the logits) averaged over the D steps, `g_loss` (G's whole loss) and, per extra loss,
    `g_<name>`. `axis_name`: set by the pmap form; gradients are averaged over it and the
    gradient penalty's interpolation draws are per device (of the global batch).
    `update_scale(step) -> scalar`: optional, multiplies both networks' updates at that
    step (a learning-rate schedule over the run's steps that survives optimizer resets,
    as ProGAN's per phase); not given, the updates are the optimizers' own.
    """
    _check(cfg)
    if g_tx is None or d_tx is None:
        default_g_tx, default_d_tx = optimizers(cfg)
        g_tx = default_g_tx if g_tx is None else g_tx
        d_tx = default_d_tx if d_tx is None else d_tx
    d_loss_fn, g_loss_fn = GAN_LOSSES[cfg.loss]
    extra_g_losses = dict(extra_g_losses or {})
    extra_d_losses = dict(extra_d_losses or {})

    def scaled(updates, step):
        if update_scale is None:
            return updates
        factor = update_scale(step)
        return jax.tree_util.tree_map(lambda u: u * jnp.asarray(factor, u.dtype), updates)

    def d_step(state, batch, rng):
        z_rng, gp_rng = jax.random.split(rng)
        x_real, inputs = real(batch), generator_inputs(batch, z_rng)
        if (cfg.gp_weight or cfg.r1_gamma) and len(jax.tree_util.tree_leaves(x_real)) != 1:
            raise ValueError("Gradient penalties (gp_weight, r1_gamma) need D's images as one array, not a pytree "
                             "of domains: set them to 0 for this task.")
        fake, g_stats = generate(state.params[G], state.model_state[G], inputs, True)
        fake = jax.lax.stop_gradient(fake)
        if fake_pool is not None:  # its own key: z_rng and gp_rng stay as they were
            fake, state = fake_pool(state, fake, jax.random.fold_in(rng, 2))

        def loss_fn(d_params):
            real_logits, d_stats = critic(d_params, state.model_state[D], x_real, batch, True)
            fake_logits, d_stats = critic(d_params, d_stats, fake, batch, True)
            loss = _over_leaves(d_loss_fn, real_logits, fake_logits)
            frozen_critic = lambda x: critic(d_params, d_stats, x, batch, False)[0]  # noqa: E731

            def penalized(loss):
                if cfg.gp_weight:
                    loss = loss + cfg.gp_weight * gradient_penalty(frozen_critic, x_real, fake, gp_rng, axis_name)
                if cfg.r1_gamma:
                    loss = loss + 0.5 * cfg.r1_gamma * r1_penalty(frozen_critic, x_real)
                return loss

            if cfg.d_reg_interval == 1:
                loss = penalized(loss)
            else:  # only the taken branch runs, forward and backward
                k = cfg.d_reg_interval
                loss = loss + jax.lax.cond(state.step % k == 0, lambda: k * penalized(jnp.zeros_like(loss)),
                                           lambda: jnp.zeros_like(loss))
            parts = {}
            for name, fn in extra_d_losses.items():
                parts[f"d_{name}"] = fn(real_logits, fake_logits, batch)
                loss = loss + parts[f"d_{name}"]
            return loss, (d_stats, real_logits, fake_logits, parts)

        (loss, (d_stats, real_logits, fake_logits, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params[D])
        grads = _mean_over(grads, axis_name)
        updates, d_opt = d_tx.update(grads, state.opt_state[D], state.params[D])
        updates = scaled(updates, state.step)
        state = state.replace(
            params={**state.params, D: optax.apply_updates(state.params[D], updates)},
            opt_state={**state.opt_state, D: d_opt},
            model_state={G: g_stats, D: d_stats},
        )
        return state, {"d_loss": loss, "d_real": _mean_sigmoid(real_logits), "d_fake": _mean_sigmoid(fake_logits),
                       **parts}

    def g_step(state, batch, rng):
        inputs = generator_inputs(batch, rng)

        def loss_fn(g_params):
            fake, g_stats = generate(g_params, state.model_state[G], inputs, True)
            logits, _ = critic(state.params[D], state.model_state[D], fake, batch, False)
            loss = _over_leaves(g_loss_fn, logits)
            parts = {}
            regenerate = lambda x: generate(g_params, state.model_state[G], x, True)[0]  # noqa: E731
            for name, fn in extra_g_losses.items():
                parts[f"g_{name}"] = fn(fake, batch, regenerate)
                loss = loss + parts[f"g_{name}"]
            return loss, (g_stats, parts)

        (loss, (g_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params[G])
        grads = _mean_over(grads, axis_name)
        updates, g_opt = g_tx.update(grads, state.opt_state[G], state.params[G])
        updates = scaled(updates, state.step)
        g_params = optax.apply_updates(state.params[G], updates)
        # EMA with a warm-up (as TF's ExponentialMovingAverage with num_updates): early
        # averages would otherwise be dominated by the random initial weights.
        decay = jnp.minimum(cfg.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, state.extra["ema"], g_params)
        state = state.replace(
            params={**state.params, G: g_params},
            opt_state={**state.opt_state, G: g_opt},
            model_state={**state.model_state, G: g_stats},
            extra={**state.extra, "ema": ema},
        )
        return state, {"g_loss": loss, **parts}

    def train_step(state, batch):
        size = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if size % cfg.n_critic:
            raise ValueError(f"A batch of {size} does not split into n_critic={cfg.n_critic} equal D-step slices: "
                             "read n_critic times the D batch.")
        n = size // cfg.n_critic
        d_metrics = []
        for i in range(cfg.n_critic):  # unrolled: n_critic is small and static
            state, metrics = d_step(state, _slice(batch, slice(i * n, (i + 1) * n)), state.step_rng(i))
            d_metrics.append(metrics)
        # The mean over the D steps, not the last one's (n_critic=1: that one, unchanged).
        metrics = {k: functools.reduce(operator.add, [m[k] for m in d_metrics]) for k in d_metrics[0]}
        if cfg.n_critic > 1:
            metrics = {k: v / cfg.n_critic for k, v in metrics.items()}
        state, g_metrics = g_step(state, _slice(batch, slice(0, n)), state.step_rng(cfg.n_critic))
        return state.replace(step=state.step + 1), {**metrics, **g_metrics}

    return train_step
