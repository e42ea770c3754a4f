"""CycleGAN (Zhu et al. 2017) on the shared loop and the one adversarial step.

Two ResNet generators (A->B and B->A) and two PatchGAN discriminators (D_A judges domain
A, D_B domain B), trained on unpaired batches ``{"a": ..., "b": ...}``
(`jaxvision.data.unpaired`). The networks' parameters are pytrees keyed by domain:
``params["generator"] = {"a2b", "b2a"}``, ``params["discriminator"] = {"a", "b"}``, and
``generate`` maps ``{"a": x_a, "b": x_b}`` to ``{"b": G_a2b(x_a), "a": G_b2a(x_b)}``, so the
adversarial step's pytree losses sum D_A's and D_B's terms, and one ``regenerate`` of the
fakes gives both reconstructions.

Losses, as the paper's code: least squares (LSGAN); cycle consistency ``lambda *
(|G_b2a(G_a2b(a)) - a| + |G_a2b(G_b2a(b)) - b|)`` with lambda 10; identity ``0.5 * lambda *
(|G_a2b(b) - b| + |G_b2a(a) - a|)``; L1 as means over pixels. jaxvision's least-squares G
loss carries Mao et al.'s 0.5 (``0.5 E (D(G(x)) - 1)^2``), the CycleGAN code's does not
(MSE): so the cycle and identity terms are added with half their weights, which keeps the
paper's ratios exactly; G's whole loss (and gradient) is half the code's, to which Adam is
invariant. Logged: ``g_cycle`` and ``g_identity`` as added, ``d_loss`` summed over D_A, D_B.

Image pool (Shrivastava et al. 2017; the CycleGAN code's ``ImagePool``): D is shown fakes
drawn from a buffer of the last ``pool_size`` (50) generated images per domain. Per image:
while the pool is not full, store it and show it; once full, with probability 0.5 show a
stored image (uniform index) and put the new one in its place, else show the new one. The
pools live in ``state.extra["pool"]`` (images and fill count per domain), drawn with the
step's keys, so a resumed run continues with the same pool, bit for bit.

Step order is the shared step's: D on the current G's fakes, then G; the CycleGAN code
updates G first, then D on the fakes made before that update (one step apart; same losses).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import config as config_lib
from jaxvision.tasks import adversarial
from jaxvision.tasks.adversarial import D, G, GANOptimConfig
from jaxvision.train import loop, parallel
from jaxvision.train.plots import save_image_grid

A, B = "a", "b"
A2B, B2A = "a2b", "b2a"
SOURCE = {A2B: A, B2A: B}  # the domain each generator reads


@dataclasses.dataclass(frozen=True)
class CycleGANModelConfig:
    image_size: int | None = None  # None: the domains' own size (recorded in config.json)
    g_width: int = 64  # ngf; the paper's 64
    num_blocks: int | None = None  # None: by the image size (9 at 256, 6 at 128, 3 below)
    d_width: int = 64  # ndf
    d_layers: int | None = None  # None: PatchGAN sized by the image size (70 px at 256)


@dataclasses.dataclass(frozen=True)
class CycleGANLossConfig:
    cycle_weight: float = 10.0  # lambda_A = lambda_B
    identity_weight: float = 0.5  # times cycle_weight; 0 turns the identity loss off
    pool_size: int = 50  # 0: D sees only the fresh fakes


@dataclasses.dataclass(frozen=True)
class CycleGANDataConfig:
    domain_a: str = "tfds:fashion_mnist:train:sneaker"
    domain_b: str = "tfds:fashion_mnist:train:ankle boot"
    test_a: str = "tfds:fashion_mnist:test:sneaker"
    test_b: str = "tfds:fashion_mnist:test:ankle boot"
    channels: int | None = None  # None: the domains' own (they must agree); 3 reads grayscale as RGB
    augment: str = "none"  # "resize_crop" for cycle_gan/* (286 -> 256 crop + flip, as the paper)
    data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class CycleGANEvalConfig:
    num_images: int = 1000  # test images per direction for cycle L1 and the class share
    num_grid: int = 8  # examples per direction in the sample grids
    # Share of translations a classifier assigns to the target class: the classifier run
    # (classification task) and each domain's class id in its label space; "" skips it.
    classifier_workdir: str = ""
    fid_images: int = 0  # FID to the target domain's test images, per direction (0: off)


@dataclasses.dataclass(frozen=True)
class CycleGANConfig(loop.LoopConfig):
    model: CycleGANModelConfig = CycleGANModelConfig()
    loss: CycleGANLossConfig = CycleGANLossConfig()
    data: CycleGANDataConfig = CycleGANDataConfig()
    optim: GANOptimConfig = GANOptimConfig(loss="least_squares", g_learning_rate=2e-4, d_learning_rate=2e-4)
    eval: CycleGANEvalConfig = CycleGANEvalConfig()
    global_batch_size: int = 1  # the paper's batch of 1
    total_steps: int = 1000
    sample_every: int = 500


# --- image pool --------------------------------------------------------------------------------

def init_pool(pool_size: int, image_shape) -> dict:
    return {"images": jnp.zeros((pool_size, *image_shape), jnp.float32), "count": jnp.zeros((), jnp.int32)}


def pool_draws(rng, n: int, pool_size: int):
    """The random numbers of one query of n images: u [n] in [0, 1), index [n] in [0, pool_size)."""
    u_rng, i_rng = jax.random.split(rng)
    return jax.random.uniform(u_rng, (n,)), jax.random.randint(i_rng, (n,), 0, max(pool_size, 1))


def pool_query(pool: dict, images, rng):
    """(images D sees, new pool): the CycleGAN code's ImagePool.query, one image at a time."""
    size = pool["images"].shape[0]
    if size == 0:
        return images, pool
    u, index = pool_draws(rng, images.shape[0], size)

    def one(carry, x):
        stored, count = carry
        image, u_i, j = x
        filling = count < size
        swap = jnp.logical_and(~filling, u_i > 0.5)
        shown = jnp.where(swap, stored[j], image)
        slot = jnp.where(filling, count, j)
        stored = stored.at[slot].set(jnp.where(filling | swap, image, stored[slot]))
        return (stored, count + filling.astype(jnp.int32)), shown

    (stored, count), shown = jax.lax.scan(one, (pool["images"], pool["count"]), (images.astype(jnp.float32), u, index))
    return shown.astype(images.dtype), {"images": stored, "count": count}


# --- networks and task -------------------------------------------------------------------------

def build_networks(cfg: CycleGANModelConfig, image_size: int, channels: int):
    """(generator, discriminator) modules; each is used twice, with two parameter sets."""
    from jaxvision.models.patchgan import PatchGAN
    from jaxvision.models.resnet_generator import ResnetGenerator

    return (ResnetGenerator(channels=channels, image_size=image_size, width=cfg.g_width, num_blocks=cfg.num_blocks),
            PatchGAN(image_size=image_size, width=cfg.d_width, n_layers=cfg.d_layers, norm="instance"))


def translate(generator, g_params, images, direction: str):
    """G_a2b(images) or G_b2a(images), images [B, H, W, C] in [-1, 1]."""
    return generator.apply({"params": g_params[direction]}, images)


def _l1(x, y):
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def make_task(generator, discriminator, optim: GANOptimConfig, losses: CycleGANLossConfig, *, image_shape,
              hooks=(), total_steps: int | None = None) -> loop.Task:
    g_tx, d_tx = adversarial.optimizers(optim, total_steps)
    if optim.gp_weight or optim.r1_gamma:
        raise config_lib.ConfigError("CycleGAN's D's are a pytree of two: set optim.gp_weight and r1_gamma to 0.")

    def init(rng):
        g_rngs, d_rngs, state_rng = jax.random.split(rng, 3)
        x = jnp.zeros((1, *image_shape))
        g_params = {k: generator.init(r, x)["params"] for k, r in zip((A2B, B2A), jax.random.split(g_rngs))}
        d_params = {k: discriminator.init(r, x)["params"] for k, r in zip((A, B), jax.random.split(d_rngs))}
        state = adversarial.init_state({"params": g_params}, {"params": d_params}, g_tx=g_tx, d_tx=d_tx,
                                       rng=state_rng)
        pool = {k: init_pool(losses.pool_size, image_shape) for k in (A, B)}
        return state.replace(extra={**state.extra, "pool": pool})

    def generate(g_params, g_stats, inputs, train):  # instance norm: no statistics to carry
        return {B: generator.apply({"params": g_params[A2B]}, inputs[A]),
                A: generator.apply({"params": g_params[B2A]}, inputs[B])}, g_stats

    def critic(d_params, d_stats, images, batch, train):
        return {k: discriminator.apply({"params": d_params[k]}, images[k]) for k in (A, B)}, d_stats

    def real(batch):
        return {A: batch[A], B: batch[B]}

    def fake_pool(state, fake, rng):
        shown, pools = {}, {}
        for i, k in enumerate((A, B)):
            shown[k], pools[k] = pool_query(state.extra["pool"][k], fake[k], jax.random.fold_in(rng, i))
        return shown, state.replace(extra={**state.extra, "pool": pools})

    w_cycle = 0.5 * losses.cycle_weight  # halved: see the module docstring (LS G loss has the 0.5)

    def cycle_loss(fake, batch, regenerate):
        rec = regenerate(fake)  # {"a": G_b2a(G_a2b(a)), "b": G_a2b(G_b2a(b))}
        return w_cycle * (_l1(rec[A], batch[A]) + _l1(rec[B], batch[B]))

    def identity_loss(fake, batch, regenerate):
        same = regenerate({A: batch[B], B: batch[A]})  # {"b": G_a2b(b), "a": G_b2a(a)}
        return losses.identity_weight * w_cycle * (_l1(same[B], batch[B]) + _l1(same[A], batch[A]))

    extra = {"cycle": cycle_loss}
    if losses.identity_weight:
        extra["identity"] = identity_loss
    train_step = adversarial.make_step(optim, generate=generate, critic=critic, generator_inputs=lambda b, r: real(b),
                                       real=real, extra_g_losses=extra, g_tx=g_tx, d_tx=d_tx, fake_pool=fake_pool)
    return loop.Task(init=init, train_step=train_step, hooks=tuple(hooks), progress_metrics=("d_loss", "g_loss"))


# --- run ---------------------------------------------------------------------------------------

def _data_kwargs(cfg: CycleGANConfig, image_size):
    return dict(image_size=image_size, channels=cfg.data.channels, data_dir=cfg.data.data_dir)


def resolve_shape(cfg: CycleGANConfig) -> tuple:
    """(size, channels) both domains share, or a clear error (grayscale/RGB, sizes)."""
    from jaxvision.data import unpaired

    shapes = {k: unpaired.domain_shape(d, **_data_kwargs(cfg, cfg.model.image_size))
              for k, d in (("A", cfg.data.domain_a), ("B", cfg.data.domain_b))}
    (ha, wa, ca), (hb, wb, cb) = shapes["A"], shapes["B"]
    if ca != cb:
        raise config_lib.ConfigError(
            f"Domain A has {ca}-channel images, domain B {cb}-channel (grayscale vs RGB): set data.channels=3 to "
            "read both as RGB (the identity loss needs one channel count)")
    if (ha, wa) != (hb, wb) or ha != wa:
        raise config_lib.ConfigError(f"Domains give {ha}x{wa} and {hb}x{wb} images: set model.image_size (square) "
                                     "to resize both")
    return ha, ca


def run(cfg: CycleGANConfig, workdir) -> dict:
    from jaxvision.data import unpaired

    workdir = Path(workdir)
    if cfg.parallel != "mesh":
        raise config_lib.ConfigError("CycleGAN runs in the mesh form only (its image pools are one global state).")
    size, channels = resolve_shape(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_size=size),
                              data=dataclasses.replace(cfg.data, channels=channels))
    generator, discriminator = build_networks(cfg.model, size, channels)
    evaluate = Evaluator(cfg, generator, workdir)

    def hook(step, state):
        return evaluate(step, state, final=step == cfg.total_steps)

    task = make_task(generator, discriminator, cfg.optim, cfg.loss, image_shape=(size, size, channels), hooks=[hook],
                     total_steps=cfg.total_steps)

    def train_data(start_step):
        return unpaired.unpaired_batches(cfg.data.domain_a, cfg.data.domain_b, global_batch_size=cfg.global_batch_size,
                                         seed=cfg.seed, start_step=start_step, augment=cfg.data.augment,
                                         **_data_kwargs(cfg, cfg.model.image_size))

    return loop.train(task, workdir=workdir, train_data=train_data, global_batch_size=cfg.global_batch_size,
                      eval_every=cfg.sample_every, parallel_form=parallel.make("mesh"),
                      config=config_lib.to_dict(cfg), **cfg.loop_args())


def load_config(workdir) -> CycleGANConfig:
    config = Path(workdir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"No CycleGAN run in {workdir} (no config.json): pass the --run folder of a "
                                "CycleGAN training run.")
    return config_lib.from_dict(CycleGANConfig, json.loads(config.read_text()))


def evaluate_run(workdir, **eval_fields) -> dict:
    """The end-of-run metrics of a run's newest checkpoint, without training; `eval_fields`
    override its config's eval section (e.g. fid_images=50)."""
    from jaxvision.train import load_params

    cfg = load_config(workdir)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **eval_fields))
    generator, _ = build_networks(cfg.model, cfg.model.image_size, cfg.data.channels)
    return Evaluator(cfg, generator, workdir).final_metrics(load_params(workdir)[G])


def load_translator(workdir, direction: str):
    """(jitted images -> translations, config) of a CycleGAN run's newest checkpoint."""
    from jaxvision.train import load_params

    if direction not in (A2B, B2A):
        raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
    cfg = load_config(workdir)
    params = load_params(workdir)[G]
    generator, _ = build_networks(cfg.model, cfg.model.image_size, cfg.data.channels)
    fn = jax.jit(lambda x: translate(generator, params, x, direction))
    return fn, cfg


# --- evaluation --------------------------------------------------------------------------------

class Evaluator:
    """Sample grids (input | translated | reconstructed, both directions) at every
    evaluation; at the end, per direction over the test images: cycle L1, the share the
    classifier assigns to the target class (next to its share on real target images),
    and FID to the target domain's test images (next to the real train-vs-test floor)."""

    def __init__(self, cfg: CycleGANConfig, generator, workdir):
        from jaxvision.data import unpaired

        if cfg.eval.fid_images > cfg.eval.num_images:
            raise config_lib.ConfigError(f"eval.fid_images ({cfg.eval.fid_images}) must be <= eval.num_images "
                                         f"({cfg.eval.num_images}): FID uses the translations of those images")
        self.cfg, self.workdir = cfg, Path(workdir)
        self.domains = {A2B: (cfg.data.test_a, cfg.data.test_b, cfg.data.domain_b),
                        B2A: (cfg.data.test_b, cfg.data.test_a, cfg.data.domain_a)}
        self.images = lambda spec, n: unpaired.domain_images(spec, num_images=n, batch_size=100,
                                                             **_data_kwargs(cfg, cfg.model.image_size))
        self.grid = {d: np.concatenate(list(self.images(src, cfg.eval.num_grid))) for d, (src, _, _) in
                     self.domains.items()}
        self.cycle = jax.jit(lambda p, x, d: self._cycle(generator, p, x, d), static_argnums=2)
        self.target = {}
        if cfg.eval.classifier_workdir:
            ids = {d: unpaired.class_id(unpaired.parse_domain(t), cfg.data.data_dir) for d, (_, t, _) in
                   self.domains.items()}
            if None in ids.values():
                raise config_lib.ConfigError("eval.classifier_workdir: the class share needs class domains "
                                             "(tfds:NAME:SPLIT:CLASS) in the classifier's label space")
            self.target = ids
            from jaxvision.tasks import classification

            classify, _ = classification.classifier_fn_from_run(cfg.eval.classifier_workdir)
            self.classify = lambda x: classify(x)[0]

    @staticmethod
    def _cycle(generator, params, x, direction):
        y = translate(generator, params, x, direction)
        return y, translate(generator, params, y, B2A if direction == A2B else A2B)

    def __call__(self, step: int, state, final: bool) -> dict:
        params = state.params[G]
        columns = []
        for d, x in self.grid.items():
            y, r = self.cycle(params, x, d)
            columns += [x, np.asarray(y), np.asarray(r)]
        rows = np.stack(columns, axis=1).reshape(-1, *columns[0].shape[1:])  # per example: a|a2b|rec, b|b2a|rec
        if jax.process_index() == 0:
            save_image_grid(rows, self.workdir / "samples" / f"translations_{step:07d}.png", nrow=len(columns))
        return self.final_metrics(params) if final else {}

    def final_metrics(self, params) -> dict:
        from jaxvision.metrics import fidelity
        from jaxvision.metrics.evaluators import quantize

        cfg, out = self.cfg.eval, {}
        for d, (src, tgt, tgt_train) in self.domains.items():
            l1, count, fakes, logits = 0.0, 0, [], []
            for x in self.images(src, cfg.num_images):
                y, r = self.cycle(params, x, d)
                l1 += float(jnp.sum(jnp.mean(jnp.abs(r - x), axis=(1, 2, 3))))
                count += len(x)
                if len(fakes) * 100 < cfg.fid_images:
                    fakes.append(np.asarray(y))
                if self.target:
                    logits.append(np.asarray(self.classify(quantize(y))))  # on the uint8 grid, as real images
            out[f"{d}/cycle_l1"] = l1 / count
            out[f"{d}/num_images"] = count
            if self.target:
                n_cls = logits[0].shape[1]
                out[f"{d}/target_share"] = float(fidelity.class_histogram(np.concatenate(logits), n_cls)
                                                 ["shares"][self.target[d]])
                real = np.concatenate([np.asarray(self.classify(x)) for x in self.images(tgt, cfg.num_images)])
                out[f"{d}/target_share_real"] = float(fidelity.class_histogram(real, n_cls)["shares"][self.target[d]])
            if cfg.fid_images:
                out.update({f"{d}/{k}": v for k, v in self._fid(fakes, tgt, tgt_train).items()})
        return out

    def _fid(self, fakes, tgt, tgt_train) -> dict:
        """FID of translations to the target test images, and the real floor (target train
        images vs the same test images), each from `fid_images` images."""
        from jaxvision.metrics.evaluators import fid_inception_or_none
        from jaxvision.metrics.fid import FeatureExtractor, compute_metrics

        if not hasattr(self, "extractor"):  # looked up once: one stderr line, not one per direction
            net_factory = fid_inception_or_none("CycleGAN: FID")
            self.extractor = None if net_factory is None else FeatureExtractor(net_factory(), batch_size=50)
        if self.extractor is None:
            return {}
        n = self.cfg.eval.fid_images
        feats = lambda batches: self.extractor(batches, value_range=(-1.0, 1.0), num_images=n)  # noqa: E731
        real = feats(self.images(tgt, n))
        return {"fid": compute_metrics(feats(iter(fakes)), real, ("fid",))["fid"],
                "fid_real_floor": compute_metrics(feats(self.images(tgt_train, n)), real, ("fid",))["fid"]}
