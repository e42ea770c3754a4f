"""One process of a multi-process run on localhost (started by tests/test_parallel.py).

argv: workdir coordinator num_processes process_id parallel_form
XLA_FLAGS gives each process its fake CPU devices; gloo carries the collectives.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxvision.train import distributed  # noqa: E402

workdir, coordinator, num_processes, process_id, form = sys.argv[1:6]
if int(num_processes) > 1:
    distributed.initialize(coordinator, int(num_processes), int(process_id), timeout_seconds=120)

import dataclasses  # noqa: E402

from jaxvision.tasks import classification as cls  # noqa: E402

cfg = cls.ClassificationConfig(
    model=cls.ModelConfig(variant=None, width=16, depth=1, mlp_dim=32, num_heads=2, pool="gap"),
    data=cls.DataConfig(train_split="train[:512]", eval_split="test[:200]", data_dir=os.environ.get("TFDS_DATA_DIR")),
    optim=cls.OptimConfig(learning_rate=3e-3, warmup_steps=1),
    global_batch_size=32, total_steps=4, log_every=2, checkpoint_every=2, progress=False, parallel=form,
)
cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant="Ti/4"))
results = cls.run(cfg, workdir)
print("RESULT", results["test_accuracy"], flush=True)
