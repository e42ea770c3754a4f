"""Evaluation metrics. They take arrays (features, logits), never a model class: the
feature function that produced them is the caller's choice.

The pytorch-fid protocol (images -> FID-Inception features -> FID / IS / KID, reference
statistics cache) is ``jaxvision.metrics.fid``; its command line is
``python -m jaxvision.metrics.cli`` with image sources in ``jaxvision.metrics.sources``."""

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
