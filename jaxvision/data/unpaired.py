"""Unpaired image domains for image-to-image translation (CycleGAN).

A domain is named by a string:

* ``tfds:NAME:SPLIT`` - every image of a tfds split (``tfds:cycle_gan/horse2zebra:trainA``,
  its test images ``...:testA``);
* ``tfds:NAME:SPLIT:CLASS`` - the images of one class (id or name, case-insensitive:
  ``tfds:fashion_mnist:train:sneaker``, ``...:ankle boot``, ``...:9``);
* ``folder:PATH`` (or an existing folder's path) - every image file in a folder, resized
  (short side) and centre-cropped to ``image_size``, held in memory.

Training batches are ``{"a": [B, H, W, C], "b": [B, H, W, C]}``, float32 in [-1, 1]. The
two domains are shuffled independently: domain A by seed ``2 * seed``, domain B by
``2 * seed + 1``, each over its own epochs (domains may differ in size). So no example of
A is tied to an example of B: the partner of an A image changes from epoch to epoch, and
two class subsets of one split never line up by stored position. Both streams are pure
functions of (domain, seed, batch, step), like every jaxvision pipeline: a resumed run
sees exactly the batches an uninterrupted one would have seen.

tfds domains go through ``train_iterator`` / ``eval_batches`` (in-memory permutation,
stateless augmentation, per-process slices); folders through the same scheme in NumPy.
Nothing here downloads unless a tfds domain is not prepared and ``download=True``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

FASHION_MNIST_PAIRS = {  # preset -> (class A, class B) of Fashion-MNIST
    "sneaker2boot": ("sneaker", "ankle boot"),
    "tshirt2shirt": ("t-shirt/top", "shirt"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Domain:
    kind: str  # "tfds" or "folder"
    name: str  # tfds dataset name, or folder path
    split: str = ""
    label: str | None = None  # class id or name (tfds only)

    def __str__(self):
        if self.kind == "folder":
            return f"folder:{self.name}"
        return f"tfds:{self.name}:{self.split}" + ("" if self.label is None else f":{self.label}")


def parse_domain(spec) -> Domain:
    """A domain from its string (see the module docstring); a Domain is returned as is."""
    if isinstance(spec, Domain):
        return spec
    if spec.startswith("folder:"):
        return Domain("folder", spec[len("folder:"):])
    if spec.startswith("tfds:"):
        parts = spec[len("tfds:"):].split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"tfds domain {spec!r}: write tfds:NAME:SPLIT or tfds:NAME:SPLIT:CLASS, "
                             "e.g. tfds:cycle_gan/horse2zebra:trainA or tfds:fashion_mnist:train:sneaker")
        return Domain("tfds", parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    if Path(spec).is_dir():
        return Domain("folder", spec)
    raise ValueError(f"Unknown domain {spec!r}: write tfds:NAME:SPLIT[:CLASS] or folder:PATH (no folder of that "
                     "name exists)")


def fashion_mnist_domains(preset: str, split: str = "train") -> tuple[Domain, Domain]:
    if preset not in FASHION_MNIST_PAIRS:
        raise ValueError(f"Unknown Fashion-MNIST pair {preset!r}; choose one of {sorted(FASHION_MNIST_PAIRS)}")
    a, b = FASHION_MNIST_PAIRS[preset]
    return Domain("tfds", "fashion_mnist", split, a), Domain("tfds", "fashion_mnist", split, b)


def class_id(domain: Domain, data_dir: str | None = None, *, download: bool = True) -> int | None:
    """The integer label of a class domain (None for a whole split or a folder)."""
    if domain.kind != "tfds" or domain.label is None:
        return None
    from jaxvision.data.prepare import ensure_prepared

    features = ensure_prepared(domain.name, data_dir, download=download).info.features
    feature = features["label"] if "label" in features.keys() else None
    names = list(getattr(feature, "names", None) or [])
    if domain.label.isdigit():
        if names and not int(domain.label) < len(names):
            raise ValueError(f"{domain}: class {domain.label} out of range (0-{len(names) - 1})")
        return int(domain.label)
    lowered = [n.lower().replace("_", " ") for n in names]
    wanted = domain.label.lower().replace("_", " ")
    if wanted not in lowered:
        raise ValueError(f"{domain}: no class {domain.label!r} in {domain.name!r}; its classes: {names}")
    return lowered.index(wanted)


# --- folders -----------------------------------------------------------------------------------

def image_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}: pass a folder of images (.png, .jpg, ...)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"Folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): put the domain's "
                         "images in it (subfolders are not read)")
    return files


def image_mode(path) -> str:
    """"L" (grayscale) or "RGB": how jaxvision reads the file (palette/alpha -> RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        return "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"


def folder_channels(files) -> int:
    """1 or 3; a clear error when a folder mixes grayscale and RGB images."""
    modes = {p: image_mode(p) for p in files}
    kinds = set(modes.values())
    if len(kinds) > 1:
        gray = [p.name for p, m in modes.items() if m == "L"][:3]
        rgb = [p.name for p, m in modes.items() if m == "RGB"][:3]
        raise ValueError(f"Folder {Path(files[0]).parent} mixes grayscale ({', '.join(gray)}, ...) and RGB "
                         f"({', '.join(rgb)}, ...) images: convert them to one kind, or pass channels=1 or 3")
    return 1 if kinds == {"L"} else 3


def load_image(path, image_size: int | None, channels: int) -> np.ndarray:
    """uint8 [S, S, channels]: short side resized to `image_size` (bilinear), centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if image_size is not None:
            w, h = im.size
            scale = image_size / min(w, h)
            im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                           Image.BILINEAR)
            w, h = im.size
            left, top = (w - image_size) // 2, (h - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        x = np.asarray(im, np.uint8)
    return x[..., None] if x.ndim == 2 else x


def load_folder(folder, image_size: int, channels: int | None = None) -> np.ndarray:
    files = image_files(folder)
    channels = channels or folder_channels(files)
    return np.stack([load_image(p, image_size, channels) for p in files])


def _to_float(x):
    return x.astype(np.float32) / 127.5 - 1.0


def _array_stream(arrays: np.ndarray, *, global_batch_size: int, seed: int, start_step: int, flip: bool,
                  process_index: int, process_count: int) -> Iterator[np.ndarray]:
    """The in-memory scheme of `train_iterator` in NumPy: a permutation per (seed, epoch),
    this process's slice of each global batch, flips seeded by (seed, global position)."""
    n, local = len(arrays), global_batch_size // process_count
    steps_per_epoch = n // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"A domain of {n} images is smaller than one global batch of {global_batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)[: steps_per_epoch * global_batch_size]
        rows = order.reshape(steps_per_epoch, global_batch_size)[offset, process_index * local:][:local]
        x = _to_float(arrays[rows])
        if flip:
            positions = step * global_batch_size + process_index * local + np.arange(local)
            mirror = np.array([np.random.default_rng([seed, p]).random() < 0.5 for p in positions])
            x[mirror] = x[mirror, :, ::-1]
        yield x
        step += 1


# --- training batches --------------------------------------------------------------------------

def _tfds_args(domain: Domain, data_dir, download):
    label = class_id(domain, data_dir, download=download)
    if label is None:
        return dict(features=("image",))
    return dict(features=("image", "label"), classes=[label])


def _match_channels(x: np.ndarray, channels: int | None, domain) -> np.ndarray:
    if channels is None or x.shape[-1] == channels:
        return x
    if x.shape[-1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    raise ValueError(f"{domain} has {x.shape[-1]}-channel images but channels={channels} was asked: "
                     "only grayscale -> RGB is converted")


def domain_stream(domain, *, global_batch_size: int, seed: int, start_step: int = 0, image_size: int | None = None,
                  channels: int | None = None, augment: str = "none", data_dir: str | None = None,
                  download: bool = True, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[np.ndarray]:
    """Shuffled training images of one domain from `start_step` on, float32 [B, H, W, C] in [-1, 1].
    augment: a `train_iterator` augmentation for tfds domains; folders take "none" or "flip"."""
    import jax

    domain = parse_domain(domain)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if domain.kind == "folder":
        if augment not in ("none", "flip"):
            raise ValueError(f"augment={augment!r}: folder domains take 'none' or 'flip' (images are resized "
                             "and centre-cropped to image_size when read)")
        if image_size is None:
            raise ValueError(f"{domain}: give image_size (folder images are resized to it)")
        arrays = load_folder(domain.name, image_size, channels)
        yield from _array_stream(arrays, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
                                 flip=augment == "flip", process_index=pi, process_count=pc)
        return
    from jaxvision.data.pipeline import train_iterator

    it = train_iterator(domain.name, domain.split, global_batch_size=global_batch_size, seed=seed,
                        start_step=start_step, data_dir=data_dir, augment=augment, image_size=image_size,
                        download=download, process_index=pi, process_count=pc,
                        **_tfds_args(domain, data_dir, download))
    for batch in it:
        yield _match_channels(batch["image"], channels, domain)


def domain_seeds(seed: int) -> tuple[int, int]:
    """Independent shuffles: A by 2 * seed, B by 2 * seed + 1 (never the same permutation)."""
    return 2 * seed, 2 * seed + 1


def unpaired_batches(domain_a, domain_b, *, global_batch_size: int, seed: int, start_step: int = 0,
                     **kwargs) -> Iterator[dict]:
    """{"a": images of A, "b": images of B} per step, the two domains shuffled independently
    (see the module docstring); kwargs as `domain_stream`."""
    seed_a, seed_b = domain_seeds(seed)
    a = domain_stream(domain_a, global_batch_size=global_batch_size, seed=seed_a, start_step=start_step, **kwargs)
    b = domain_stream(domain_b, global_batch_size=global_batch_size, seed=seed_b, start_step=start_step, **kwargs)
    for x_a, x_b in zip(a, b):
        yield {"a": x_a, "b": x_b}


# --- evaluation images ---------------------------------------------------------------------------

def domain_images(domain, *, num_images: int | None = None, batch_size: int = 100, image_size: int | None = None,
                  channels: int | None = None, data_dir: str | None = None,
                  download: bool = True) -> Iterator[np.ndarray]:
    """The domain's images in stored order, once, float32 [b, H, W, C] in [-1, 1] (the last
    batch shorter), at most `num_images`. For evaluation and sample grids."""
    domain = parse_domain(domain)
    if domain.kind == "folder":
        files = image_files(domain.name)[:num_images]
        channels = channels or folder_channels(files)
        for i in range(0, len(files), batch_size):
            yield _to_float(np.stack([load_image(p, image_size, channels) for p in files[i:i + batch_size]]))
        return
    from jaxvision.data.evaluation import eval_batches

    seen = 0
    for batch in eval_batches(domain.name, domain.split, global_batch_size=batch_size, data_dir=data_dir,
                              image_size=image_size, download=download, process_index=0, process_count=1,
                              **_tfds_args(domain, data_dir, download)):
        x = _match_channels(batch["image"][batch["mask"]], channels, domain)
        if num_images is not None:
            x = x[: num_images - seen]
        if len(x):
            yield x
        seen += len(x)
        if num_images is not None and seen >= num_images:
            return


def domain_shape(domain, *, image_size: int | None = None, channels: int | None = None,
                 data_dir: str | None = None, download: bool = True) -> tuple:
    """(height, width, channels) of the domain's images as the streams yield them."""
    first = next(domain_images(domain, num_images=1, batch_size=1, image_size=image_size, channels=channels,
                               data_dir=data_dir, download=download))
    return first.shape[1:]
