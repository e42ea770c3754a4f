"""tfds input pipelines. Importing this package imports TensorFlow: keep it out of
model, step and metric code so those run where TensorFlow is absent (GPU machines)."""

from jaxvision.data.pipeline import (
    DatasetInfo,
    TrainIterator,
    dataset_info,
    eval_batches,
    image_batches,
    train_iterator,
)
from jaxvision.data.prepare import default_data_dir, ensure_prepared

__all__ = [
    "DatasetInfo",
    "TrainIterator",
    "dataset_info",
    "default_data_dir",
    "ensure_prepared",
    "eval_batches",
    "image_batches",
    "train_iterator",
]
