"""Make sure a tfds dataset is prepared on disk, online or from local files.

Online users get the ordinary `tfds` download. Offline machines can prepare the
standard `fashion_mnist` dataset (same name, same version, same records) from the
four original IDX files that the Debian package `dataset-fashion-mnist` installs.
Either way the pipeline afterwards reads the dataset with plain `tfds`, so there is
one input pipeline, not an online one and an offline one.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

# Where `apt-get install dataset-fashion-mnist` puts the files; overridable.
FASHION_MNIST_LOCAL_DIR = Path(
    os.environ.get("JAXVISION_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
_IDX_FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR` if set, else tfds's own default (~/tensorflow_datasets)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
    """tfds's own FashionMNIST builder, reading the IDX files from a local folder.

    Only `_split_generators` differs: it extracts the local files instead of
    downloading them, so the prepared dataset is tfds's `fashion_mnist` itself.
    """

    # Same name (and so the same folder and version) as the registered builder; it is
    # not registered itself, so it never shadows the real one in tfds's registry.
    name = "fashion_mnist"

    def __init__(self, *, local_dir: Path = FASHION_MNIST_LOCAL_DIR, **kwargs):
        self.local_dir = Path(local_dir)
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        paths = dl_manager.extract({k: self.local_dir / v for k, v in _IDX_FILES.items()})
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(
                    num_examples=count,
                    data_path=paths[f"{prefix}_data"],
                    label_path=paths[f"{prefix}_labels"],
                ),
            )
            for split, prefix, count in (
                (tfds.Split.TRAIN, "train", tfds_mnist._TRAIN_EXAMPLES),
                (tfds.Split.TEST, "test", tfds_mnist._TEST_EXAMPLES),
            )
        ]


def local_fashion_mnist_available(local_dir: Path | None = None) -> bool:
    local_dir = Path(local_dir or FASHION_MNIST_LOCAL_DIR)
    return all((local_dir / f).is_file() for f in _IDX_FILES.values())


def prepare_local_fashion_mnist(data_dir: str, local_dir: Path | None = None) -> None:
    """Prepare `fashion_mnist` in `data_dir` from local IDX files (about 30 s)."""
    builder = LocalFashionMNIST(local_dir=local_dir or FASHION_MNIST_LOCAL_DIR, data_dir=data_dir)
    builder.download_and_prepare()


def ensure_prepared(name: str, data_dir: str | None = None, *, download: bool = True):
    """Return a prepared `tfds` builder for `name`, preparing it if needed.

    Order: already on disk -> local Fashion-MNIST files (identical source data, no
    network) -> the normal tfds download. With none of them: a clear error.
    `fashion_scenes/...` (jaxvision's synthetic scenes) is generated locally from the
    prepared `fashion_mnist`, never downloaded.
    """
    data_dir = data_dir or default_data_dir()
    if name.split("/")[0].split(":")[0] == "fashion_scenes":
        import jaxvision.data.scenes  # noqa: F401  registers the synthetic dataset with tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"Unknown tfds dataset {name!r}. Use a name from tfds.list_builders(), "
            "for example 'fashion_mnist', 'mnist', 'cifar10' or 'imagenet2012'."
        ) from err
    if builder.is_prepared():
        return builder

    if builder.name == "fashion_mnist" and local_fashion_mnist_available():
        prepare_local_fashion_mnist(data_dir)
        return tfds.builder(name, data_dir=data_dir)

    fixes = (
        "Fix it in one of two ways: (1) allow network access so tfds can download it, or "
        f"(2) prepare it once where you have the data, into TFDS data_dir {data_dir!r}"
    )
    if builder.name == "fashion_mnist":
        fixes += (
            "; offline, `apt-get install -y dataset-fashion-mnist` installs the original files "
            f"in {FASHION_MNIST_LOCAL_DIR} (or set JAXVISION_FASHION_MNIST_DIR to a folder with "
            "the four IDX .gz files) and jaxvision prepares them automatically"
        )
    if not download:
        raise FileNotFoundError(f"tfds dataset {name!r} is not prepared in {data_dir!r} and download=False. {fixes}.")
    try:
        builder.download_and_prepare()
    except Exception as err:  # tfds raises many kinds of network / manual-download errors
        raise RuntimeError(f"Could not prepare tfds dataset {name!r}: {err}\n{fixes}.") from err
    return builder

