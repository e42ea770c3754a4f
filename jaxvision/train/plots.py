"""PNG plots of the metrics log, and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Curves go to a file per family: every metric whose name contains the key.
PLOT_FAMILIES = {"loss": "loss.png", "accuracy": "accuracy.png", "learning_rate": "learning_rate.png",
                 "frechet": "frechet_distance.png", "d_real": "discriminator.png", "miou": "miou.png",
                 "AP": "average_precision.png"}


def plot_metrics(records: list[dict], out_dir) -> list[Path]:
    """One PNG per metric family found in `records` (from metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, filename in PLOT_FAMILIES.items():
        names = sorted({k for r in records for k in r if key in k and k != "step"})
        if key == "d_real":
            names = sorted({k for r in records for k in r if k.endswith(("d_real", "d_fake"))})
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, label=name, marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def save_image_grid(images, path, *, nrow: int | None = None, value_range=(-1.0, 1.0), padding: int = 2):
    """Save a batch [N, H, W, C] as one PNG grid. Values are mapped from `value_range`
    (fixed, never per-batch min-max, so grids are comparable across steps)."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    lo, hi = value_range
    pixels = np.clip((images - lo) / (hi - lo), 0, 1)
    pixels = np.round(pixels * 255).astype(np.uint8)
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = pixels[i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return Path(path)
