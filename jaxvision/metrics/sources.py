"""Image sources for the FID / IS / KID command line: a registry of loaders.

A source is named by a string. ``resolve(spec, ctx)`` picks its loader:

* ``SCHEME:REST`` with a registered scheme -> ``SOURCES[SCHEME](REST, ctx)``;
* a path ending in ``.npz`` -> ``npz`` (statistics ``mu``/``sigma``, and/or features
  ``pool``/``features`` and ``logits``: ours or pytorch-fid's ``--save-stats`` files);
* a directory -> ``folder`` (its PNG/JPEG/... files, sorted, not recursive; each image
  converted to RGB with PIL as pytorch-fid does).

Built in: ``folder:PATH``, ``npz:PATH``, ``tfds:NAME[:SPLIT]`` (split defaults to
``train``; the statistics are cached on disk, keyed by dataset, split, image count,
protocol and network).

Adding a source (e.g. samples of one of our generator checkpoints) is one function: it
makes image batches and hands them to ``ctx.extract``::

    from jaxvision.metrics import sources

    def _checkpoint_source(rest: str, ctx: sources.SourceContext) -> FeatureSet:
        sample = ...  # restore the generator named by `rest`; sample(i) -> images [B, H, W, C]
        n = ctx.num_images or 50_000
        batches = (sample(i) for i in range(-(-n // ctx.batch_size)))
        return ctx.extract(batches, value_range=(-1.0, 1.0), num_images=n, meta={"source": rest})

    sources.register_source("checkpoint", _checkpoint_source)

Batches may be NumPy or device (JAX) arrays; float batches are quantised to uint8 on the
device (``value_range``), exactly as if they had been saved to PNG.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from jaxvision.metrics.fid import PROTOCOL, FeatureExtractor, FeatureNet, FeatureSet, cached_feature_set

# pytorch-fid's list.
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


@dataclasses.dataclass
class SourceContext:
    """What a loader may use. ``net_factory`` is called at most once, and only when
    images are to be embedded (comparing two statistics files needs no weights)."""

    net_factory: Callable[[], FeatureNet]
    batch_size: int = 50
    num_images: int | None = None  # None: the whole source
    need_features: bool = False  # KID or IS asked: keep pool features and logits
    cache_dir: str | Path | None = None  # reference statistics cache; None: no caching
    data_dir: str | None = None  # tfds data dir
    progress: bool = False
    _extractor: FeatureExtractor | None = dataclasses.field(default=None, repr=False)

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.net_factory(), self.batch_size)
        return self._extractor

    def extract(self, batches: Iterable, *, value_range=None, num_images: int | None = None,
                meta: Mapping | None = None) -> FeatureSet:
        return self.extractor(batches, value_range=value_range, num_images=num_images,
                              progress=self.progress, meta=meta)

    def cached(self, key: Mapping, compute: Callable[[], FeatureSet]) -> FeatureSet:
        """``compute()`` through the on-disk cache (protocol and network added to the key)."""
        if self.cache_dir is None:
            return compute()
        full = {**key, "protocol": PROTOCOL, "net": self.extractor.net.name}
        return cached_feature_set(full, compute, cache_dir=self.cache_dir, need_features=self.need_features)


SourceLoader = Callable[[str, SourceContext], FeatureSet]
SOURCES: dict[str, SourceLoader] = {}


def register_source(scheme: str, loader: SourceLoader) -> SourceLoader:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", scheme):
        raise ValueError(f"scheme must be lowercase letters, digits or _, got {scheme!r}")
    SOURCES[scheme] = loader
    return loader


def resolve(spec: str, ctx: SourceContext) -> FeatureSet:
    m = re.fullmatch(r"([a-z][a-z0-9_]*):(.*)", spec, flags=re.S)
    if m and m.group(1) in SOURCES:
        return SOURCES[m.group(1)](m.group(2), ctx)
    if spec.endswith(".npz"):
        return SOURCES["npz"](spec, ctx)
    if Path(spec).is_dir():
        return SOURCES["folder"](spec, ctx)
    raise ValueError(
        f"cannot read source {spec!r}: not a folder, not a .npz file, and no registered scheme "
        f"(schemes: {', '.join(s + ':' for s in sorted(SOURCES))})")


# --- built-in loaders ---------------------------------------------------------------------

def _npz_source(path: str, ctx: SourceContext) -> FeatureSet:
    if not Path(path).is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    fs = FeatureSet.load(path)
    net = fs.meta.get("net")
    if net is not None and ctx._extractor is not None and net != ctx._extractor.net.name:
        warnings.warn(f"{path} was computed with network {net}, not {ctx._extractor.net.name}", stacklevel=2)
    if ctx.num_images is not None and fs.pool is not None and fs.pool.shape[0] > ctx.num_images:
        lg = fs.logits[: ctx.num_images] if fs.logits is not None else None
        fs = FeatureSet.from_features(fs.pool[: ctx.num_images], lg, fs.meta)
    return fs


def image_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def _read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def folder_batches(files, batch_size: int) -> Iterable[np.ndarray]:
    """uint8 [B, H, W, 3] batches (consecutive images of one size; decoding in threads)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(files), batch_size):
            images = list(pool.map(_read_rgb, files[start:start + batch_size]))
            run = [images[0]]
            for im in images[1:]:
                if im.shape != run[0].shape:
                    yield np.stack(run)
                    run = []
                run.append(im)
            yield np.stack(run)


def _folder_source(path: str, ctx: SourceContext) -> FeatureSet:
    files = image_files(path)
    if ctx.num_images is not None:
        if len(files) < ctx.num_images:
            raise ValueError(f"{path} has {len(files)} images, fewer than the {ctx.num_images} asked")
        files = files[: ctx.num_images]
    return ctx.extract(folder_batches(files, ctx.batch_size), num_images=len(files),
                       meta={"source": f"folder:{path}"})


def _tfds_source(rest: str, ctx: SourceContext) -> FeatureSet:
    name, _, split = rest.partition(":")
    split = split or "train"
    if not name:
        raise ValueError("tfds source: write tfds:NAME[:SPLIT], e.g. tfds:cifar10:train")
    from jaxvision.data import image_batches  # TensorFlow only from here

    num, batches = image_batches(name, split, batch_size=ctx.batch_size, num_images=ctx.num_images,
                                 data_dir=ctx.data_dir)
    key = {"dataset": name, "split": split, "num_images": num}
    return ctx.cached(key, lambda: ctx.extract(batches, num_images=num, meta={"source": f"tfds:{name}:{split}"}))


register_source("npz", _npz_source)
register_source("folder", _folder_source)
register_source("tfds", _tfds_source)
