"""flax.linen model definitions. Models know nothing of data, training or checkpoints."""

from jaxvision.models.vit import VARIANTS, ViT, parse_variant  # noqa: F401
from jaxvision.models.dcgan import Discriminator, Generator  # noqa: F401
from jaxvision.models.inception import FIDInceptionV3  # noqa: F401
