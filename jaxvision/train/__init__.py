"""Train state, optimizers, the parallel step, checkpoints, logs and the one loop."""

from jaxvision.train.checkpoint import Checkpointer, load_params
from jaxvision.train.loop import NonFiniteLossError, Task, train
from jaxvision.train.state import TrainState

__all__ = ["Checkpointer", "NonFiniteLossError", "Task", "TrainState", "load_params", "train"]
