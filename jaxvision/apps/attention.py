"""Where a trained ViT looks, on a folder of your own images: attention-rollout overlays.

    python -m jaxvision.apps.attention --run runs/vit_fashion_mnist --images my_photos/ \\
        --out overlays/ [--head-fusion mean|max|min] [--discard-ratio 0.9]

For each image (PNG, JPEG, ...; converted to the model's channels and resized, bilinear,
to the run's input size) one PNG ``<name>_attention.png``: the input | the attention
rollout over it | each layer's own attention map (CLS row, or the mean row of a GAP
model; `jaxvision.explain`). ``predictions.json`` lists each image's predicted class and
its probability. Works for every classification run (plain or hybrid ViT, CLS or GAP).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

PANEL = 112  # smallest side of a shown panel in pixels: 28x28 inputs are upscaled 4x


def _fail(message: str):
    raise SystemExit(f"attention: error: {message}")


def load_classifier(run, step: int | None = None):
    """(model, params) of a classification run (`jaxvision.tasks.classification.load_classifier`)."""
    from jaxvision.tasks import classification

    return classification.load_classifier(run, step)


def input_shape(model, params) -> tuple[int, int, int]:
    """(H, W, C) the model was trained on: the square patch grid of its position
    embedding times the patch (and a hybrid's stride); the channel count whose
    parameter shapes match the checkpoint's."""
    import jax
    import jax.numpy as jnp

    from jaxvision.models.resnet import resnet_stride

    cfg = model.resolved_config()
    tokens = params["Transformer"]["posembed_input"]["pos_embedding"].shape[1] - (model.pool == "cls")
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"the run's position embedding has {tokens} patches, not a square grid")
    stride = resnet_stride(cfg["resnet_stages"]) if cfg["resnet_stages"] else 1
    h, w = side * cfg["patch_size"][0] * stride, side * cfg["patch_size"][1] * stride
    want = jax.tree_util.tree_map(np.shape, params)
    for channels in (1, 3):
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, channels)))["params"]
        if jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes) == want:
            return h, w, channels
    raise ValueError("could not match the run's parameters to 1- or 3-channel inputs")


def read_images(files, shape) -> np.ndarray:
    """[N, H, W, C] float32 in [-1, 1]: each file converted to the model's channels and
    resized (bilinear) to its input size."""
    from PIL import Image

    h, w, c = shape
    out = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            x = np.asarray(im, np.float32) / 127.5 - 1.0
        out.append(x.reshape(h, w, c))
    return np.stack(out)


def panels(model, params, images, *, head_fusion: str = "mean", discard_ratio: float = 0.0,
           batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(pictures [N, S, S', 3] uint8: input | rollout | layer maps side by side,
    probabilities [N, classes])."""
    import jax

    from jaxvision.explain import make_explainer, overlay

    explain = make_explainer(model, head_fusion=head_fusion, discard_ratio=discard_ratio)
    scale = max(1, -(-PANEL // min(images.shape[1:3])))
    rows, probs = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out = jax.device_get(explain({"params": params}, batch))
        probs.append(np.asarray(jax.nn.softmax(out["logits"])))
        for i, image in enumerate(batch):
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)  # nearest: the pixels the model saw
            heats = [out["rollout"][i]] + [layer[i] for layer in out["layers"]]
            plain = np.round(255 * np.clip((big + 1) / 2, 0, 1)).astype(np.uint8)
            shown = [np.broadcast_to(plain, (*plain.shape[:2], 3))] + [overlay(big, heat) for heat in heats]
            gap = np.full((big.shape[0], 4, 3), 255, np.uint8)
            rows.append(np.concatenate([p for picture in shown for p in (picture, gap)][:-1], axis=1))
    return np.stack(rows), np.concatenate(probs)


def write_rollout_figure(run, images, path, **kw) -> Path:
    """One PNG of `images` ([N, H, W, C] in [-1, 1]; resized to the run's input size)
    under the run's attention, one image per row (input | rollout | layers)."""
    from PIL import Image

    import jax

    model, params = load_classifier(run)
    images = np.asarray(images, np.float32)
    h, w, c = input_shape(model, params)
    if images.shape[1:] != (h, w, c):  # e.g. a run trained at another data.image_size
        images = np.asarray(jax.image.resize(images[..., :1] if c == 1 else images, (len(images), h, w, c),
                                             "bilinear"))
    pictures, _ = panels(model, params, images, **kw)
    gap = np.full((4, pictures.shape[2], 3), 255, np.uint8)
    figure = np.concatenate([p for picture in pictures for p in (picture, gap)][:-1], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(path)
    return Path(path)


def main(argv=None) -> list[Path]:
    from jaxvision.explain import HEAD_FUSIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="A classification run's --workdir.")
    parser.add_argument("--images", required=True, help="Folder of images (not read recursively).")
    parser.add_argument("--out", required=True, help="Folder for the overlays (created).")
    parser.add_argument("--head-fusion", default="mean", choices=HEAD_FUSIONS)
    parser.add_argument("--discard-ratio", type=float, default=0.0,
                        help="Share of each layer's lowest attentions set to zero, per image (vit-explain: 0.9).")
    parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the newest).")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if not 0.0 <= args.discard_ratio < 1.0:
        _fail(f"--discard-ratio must be in [0, 1), got {args.discard_ratio}")
    from jaxvision.metrics.sources import image_files  # (not jaxvision.data: no TensorFlow import)

    try:
        files = image_files(args.images)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    try:
        model, params = load_classifier(args.run, args.step)
        shape = input_shape(model, params)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    print(f"Attention of {args.run} on {len(files)} image(s), each resized to {shape[0]}x{shape[1]} with "
          f"{shape[2]} channel(s).", file=sys.stderr)
    pictures, probs = panels(model, params, read_images(files, shape), head_fusion=args.head_fusion,
                             discard_ratio=args.discard_ratio, batch_size=args.batch_size)
    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written, predictions = [], {}
    for path, picture, p in zip(files, pictures, probs):
        target = out / f"{path.stem}_attention.png"
        Image.fromarray(picture).save(target)
        written.append(target)
        predictions[path.name] = {"class": int(p.argmax()), "probability": float(p.max())}
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
    print(f"Wrote {len(written)} overlay(s) (input | rollout | layers 1..{model.resolved_config()['depth']}) "
          f"and predictions.json to {out}.", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
