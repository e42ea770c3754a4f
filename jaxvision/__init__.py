"""jaxvision: Vision Transformers and GANs in JAX/Flax.

Import direction: experiments -> train -> (models, data, metrics) -> attention.
`jaxvision.data` imports TensorFlow lazily, so models and steps work without it.
"""

__version__ = "0.1.0"
