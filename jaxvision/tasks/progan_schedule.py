"""The progressive GAN's schedule, counted in images: stabilise at 4x4, then for each
higher level a fade-in phase (alpha 0 -> 1) and a stabilise phase. Phases become steps on
the host (images per phase / that level's batch, rounded up); `phase_of` turns a step
(traced or not) into the phase, the level and alpha, so they are pure functions of the
step and a run killed mid-fade resumes bit for bit."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp

from jaxvision import config as config_lib
from jaxvision.models import progan as pg


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Images per phase (the paper: 800k each; CIFAR config 400k) and the batch per level."""

    fade_images: int = 800_000
    stable_images: int = 800_000
    batch_sizes: tuple[int, ...] = ()  # per level 4, 8, ..., resolution; (): global_batch_size
    reset_optimizer: bool = True  # Adam state zeroed at each phase start (official code)
    # A phase may show each training image at most this many times (the paper's 800k
    # images are ~27 epochs of CelebA-HQ: raise it knowingly).
    max_epochs_per_phase: float = 1.0


@dataclasses.dataclass(frozen=True)
class Phase:
    level: int
    fading: bool
    start: int  # first step
    steps: int
    batch: int
    images: int

    @property
    def end(self) -> int:
        return self.start + self.steps


def make_phases(schedule: ScheduleConfig, resolution: int, default_batch: int, fade_in: bool = True,
                total_steps: int = 0) -> list[Phase]:
    """The phases in order; `total_steps` > their sum lengthens the last (stabilise at the
    target), a positive smaller one is a run stopped early (the phases stay as they are)."""
    levels = pg.num_levels(resolution)
    batches = tuple(schedule.batch_sizes) or (default_batch,) * levels
    if len(batches) != levels or min(batches) < 1:
        raise config_lib.ConfigError(
            f"schedule.batch_sizes needs one positive batch per level ({levels} levels: "
            f"{[pg.level_size(k) for k in range(levels)]} px), got {batches}.")
    if schedule.fade_images < 1 or schedule.stable_images < 1:
        raise config_lib.ConfigError("schedule.fade_images and stable_images must be positive image counts.")
    phases, start = [], 0
    for level in range(levels):
        kinds = [(False, schedule.stable_images)] if level == 0 else [(True, schedule.fade_images),
                                                                      (False, schedule.stable_images)]
        for fading, images in kinds:
            steps = math.ceil(images / batches[level])
            phases.append(Phase(level, fading and fade_in, start, steps, batches[level], images))
            start += steps
    if total_steps > start:
        last = phases[-1]
        phases[-1] = dataclasses.replace(last, steps=total_steps - last.start,
                                         images=(total_steps - last.start) * last.batch)
    return phases


def phase_of(phases: Sequence[Phase], step):
    """(phase index, level, alpha) at `step` (traced or not) as JAX values."""
    starts = jnp.asarray([p.start for p in phases], jnp.int32)
    index = jnp.sum(step >= starts) - 1
    pick = lambda values, dtype: jnp.asarray(values, dtype)[index]  # noqa: E731
    level = pick([p.level for p in phases], jnp.int32)
    frac = (step - pick([p.start for p in phases], jnp.int32)).astype(jnp.float32) / pick(
        [p.steps for p in phases], jnp.float32)
    alpha = jnp.where(pick([p.fading for p in phases], bool), frac, jnp.float32(1.0))
    return index, level, alpha


def check_dataset_size(phases: Sequence[Phase], num_examples: int, max_epochs: float, split: str) -> None:
    biggest = max(p.images for p in phases[:-1] or phases)
    if biggest > max_epochs * num_examples:
        raise config_lib.ConfigError(
            f"A phase of the schedule shows {biggest:,} images but split {split!r} holds {num_examples:,} "
            f"(max_epochs_per_phase={max_epochs}): lower schedule.fade_images / stable_images to at most "
            f"{int(max_epochs * num_examples):,}, use a larger split, or raise schedule.max_epochs_per_phase.")


def images_seen(phases: Sequence[Phase], step: int) -> int:
    return sum(min(max(step - p.start, 0), p.steps) * p.batch for p in phases)
