"""The README's new-task example runs as written, and its mIoU is the one NumPy computes
from the trained parameters."""

import re
from pathlib import Path

import numpy as np

from jaxvision.train import load_params

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_task_example_trains_and_finalizes_miou(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    block = re.search(r"<!-- task-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its task example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block.group(1), "README-task-example", "exec"), scope)
    results = scope["results"]
    assert results["steps"] == 300 and set(results) >= {"test_miou", "train_loss", "wall_seconds_total"}

    # Independent truth: the 1x1 convolution in NumPy on the same evaluation batch.
    params = load_params(tmp_path / "runs" / "toy_segmentation")
    batch = next(scope["batches"](10**6))
    logits = batch["image"] @ np.asarray(params["kernel"]).reshape(1, 3) + np.asarray(params["bias"])
    pred, mask = logits.argmax(-1).ravel(), batch["mask"].ravel()
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (mask, pred), 1)
    tp = np.diag(confusion)
    miou = np.mean(tp / (confusion.sum(0) + confusion.sum(1) - tp))
    np.testing.assert_allclose(results["test_miou"], miou, rtol=1e-6)
    assert miou > 0.9  # the classes are separable: the loop trained the model
