"""Evaluation metrics. They take arrays (features, logits) or feature functions, never a
model class or a task: the feature function that produced them is the caller's choice.

The pytorch-fid protocol (images -> FID-Inception features -> FID / IS / KID, reference
statistics cache) is ``jaxvision.metrics.fid``; its command line is
``python -m jaxvision.metrics.cli`` with image sources in ``jaxvision.metrics.sources``.
Evaluators of a generator's samples (FD in any feature space, FID), registered by name,
are in ``jaxvision.metrics.evaluators``."""

from jaxvision.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)
from jaxvision.metrics.inception_score import inception_score
from jaxvision.metrics.kid import kernel_inception_distance

# name -> metric function. "fid" and "kid" take two feature arrays [N, D]; "is" takes
# classifier logits [N, C]. Add new metrics here so configs can name them.
METRICS = {
    "fid": frechet_distance_from_features,
    "kid": kernel_inception_distance,
    "is": inception_score,
}
