"""tfds input pipelines yielding feature dicts, jointly augmented.

Importing this package imports TensorFlow: keep it out of model, step and metric code so
those run where TensorFlow is absent (GPU machines)."""

from jaxvision.data.augment import augment_features
from jaxvision.data.evaluation import eval_batches, image_batches
from jaxvision.data.features import FeatureSpec
from jaxvision.data.memory import select_examples
from jaxvision.data.pipeline import DatasetInfo, TrainIterator, dataset_info, train_iterator
from jaxvision.data.prepare import default_data_dir, ensure_prepared
from jaxvision.data.scenes import DENSE_SOURCES, dense_batches, dense_source, to_dense

__all__ = [
    "DENSE_SOURCES",
    "DatasetInfo",
    "FeatureSpec",
    "TrainIterator",
    "augment_features",
    "dataset_info",
    "dense_batches",
    "dense_source",
    "default_data_dir",
    "ensure_prepared",
    "eval_batches",
    "image_batches",
    "select_examples",
    "to_dense",
    "train_iterator",
]
