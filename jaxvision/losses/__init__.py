"""Loss functions: pure functions of model outputs, one module per task."""

from jaxvision.losses.gan import (
    GAN_LOSSES,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    least_squares_d_loss,
    least_squares_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
    per_example_random,
    r1_penalty,
    wasserstein_d_loss,
    wasserstein_g_loss,
)
