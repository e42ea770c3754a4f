"""Evaluation metrics. They take arrays (features, logits) or feature functions, never a
model class or a task: the feature function that produced them is the caller's choice.

The pytorch-fid protocol (images -> FID-Inception features -> FID / IS / KID, reference
statistics cache) is ``jaxvision.metrics.fid``; its command line is
``python -m jaxvision.metrics.cli`` with image sources in ``jaxvision.metrics.sources``.
Evaluators of a generator's samples (FD in any feature space, FID), registered by name,
are in ``jaxvision.metrics.evaluators``. Fidelity and diversity in any feature space
(improved precision/recall, density/coverage) and a classifier's class histogram of
samples are in ``jaxvision.metrics.fidelity``."""

from jaxvision.metrics.fidelity import (
    class_histogram,
    conditional_accuracy,
    density_coverage,
    knn_radii,
    precision_recall,
    precision_recall_density_coverage,
)
from jaxvision.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)
from jaxvision.metrics.inception_score import inception_score
from jaxvision.metrics.kid import kernel_inception_distance

# name -> metric function. "fid", "kid", "precision_recall", "density_coverage" and
# "prdc" take two feature arrays (real, fake) [N, D]; "is" takes classifier logits [N, C];
# "class_histogram" takes labels [N] or logits [N, C] and num_classes. Add new metrics
# here so configs can name them.
METRICS = {
    "fid": frechet_distance_from_features,
    "kid": kernel_inception_distance,
    "is": inception_score,
    "precision_recall": precision_recall,
    "density_coverage": density_coverage,
    "prdc": precision_recall_density_coverage,
    "class_histogram": class_histogram,
}
