"""Fill the holes of your own image with a trained pix2pix inpainting run.

    python -m jaxvision.apps.inpaint --run runs/pix2pix_inpaint/pix2pix \\
        --image in.png --mask mask.png --out out.png [--mode resize|tile]

The mask is an image of the same height and width: white (> 127) marks the pixels to
fill, black the known ones. The known pixels are copied to the output unchanged.

Any size: the network was trained at one size S (28 px for Fashion-MNIST).

* ``--mode resize`` (default): image and mask are resized to S x S (bilinear / nearest),
  completed, and the completion is resized back and pasted into the hole at full size.
  Right when the picture is one object framed like the training images.
* ``--mode tile``: the image is cut into S x S tiles overlapping by half (reflect-padded
  at the borders); every tile that touches the hole is completed at the original
  resolution, and each hole pixel is the tent-weighted mean of the tiles covering it (no
  seams). Right for large images with holes smaller than S.

A grayscale run takes grayscale images and an RGB run RGB ones; ``--convert`` converts
the image instead of refusing it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MODES = ("resize", "tile")


class InpaintError(ValueError):
    pass


def read_image(path, channels: int, convert: bool) -> np.ndarray:
    """[H, W, channels] float32 in [-1, 1]."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InpaintError(f"No image file at {path}.")
    img = Image.open(path)
    is_gray = img.mode in ("1", "L", "I", "I;16", "F", "LA")
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGB" if img.mode != "LA" else "L")
    if channels == 1 and not is_gray and not convert:
        raise InpaintError(f"{path} is a colour ({img.mode}) image but the run was trained on grayscale images: "
                           "pass a grayscale image, or --convert to convert it.")
    if channels == 3 and is_gray and not convert:
        raise InpaintError(f"{path} is a grayscale image but the run was trained on RGB images: pass an RGB image, "
                           "or --convert to repeat its channel.")
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr / 127.5 - 1.0


def read_mask(path, shape) -> np.ndarray:
    """[H, W, 1] float32, 1 on the hole; refuses a mask that does not fit or fills nothing/everything."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InpaintError(f"No mask file at {path}.")
    mask = np.asarray(Image.open(path).convert("L"))
    if mask.shape != tuple(shape[:2]):
        raise InpaintError(f"The mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is {shape[1]}x{shape[0]}: "
                           "they must be the same size (white = pixels to fill).")
    hole = (mask > 127).astype(np.float32)[..., None]
    if not hole.any():
        raise InpaintError(f"The mask {path} is all black: there is nothing to fill (white marks the hole).")
    if hole.all():
        raise InpaintError(f"The mask {path} is all white: no known pixels are left to fill from "
                           "(black marks the pixels to keep).")
    return hole


def _resize(x: np.ndarray, size, nearest: bool = False) -> np.ndarray:
    import jax

    method = "nearest" if nearest else "linear"  # linear = bilinear in 2-D
    return np.asarray(jax.image.resize(x, (*size, x.shape[-1]), method=method, antialias=not nearest))


def inpaint(complete, image: np.ndarray, hole: np.ndarray, size: int, mode: str = "resize",
            progress: bool = True, batch_size: int = 64) -> np.ndarray:
    """The image [H, W, C] in [-1, 1] with its hole filled by `complete(batch) -> images`."""
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise InpaintError(f"Unknown mode {mode!r}; choose one of {MODES}.")
    h, w, _ = image.shape
    masked = np.where(hole > 0.5, 0.0, image).astype(np.float32)
    if mode == "resize" or (h, w) == (size, size):
        small_hole = _resize(hole, (size, size), nearest=True)
        if not small_hole.any():  # a hole thinner than a pixel at S x S: keep the nearest pixel
            small_hole = (_resize(hole, (size, size)) > 0).astype(np.float32)
        small = np.where(small_hole > 0.5, 0.0, _resize(masked, (size, size))).astype(np.float32)
        batch = {"masked": small[None], "hole": small_hole[None]}
        with tqdm(total=1, disable=not progress, unit="image", desc="inpaint (resize)") as bar:
            out = np.asarray(complete(batch))[0]
            bar.update(1)
        filled = out if (h, w) == (size, size) else _resize(out, (h, w))
        return np.where(hole > 0.5, filled, image).astype(np.float32)

    stride = max(1, size // 2)
    ph, pw = max(size, h), max(size, w)
    ph, pw = ph + (-(ph - size)) % stride, pw + (-(pw - size)) % stride
    pad = ((0, ph - h), (0, pw - w), (0, 0))
    mode_pad = "reflect" if ph - h < h and pw - w < w else "edge"
    big_masked, big_hole = np.pad(masked, pad, mode=mode_pad), np.pad(hole, pad, mode=mode_pad)
    tent = np.minimum(np.arange(size) + 1, size - np.arange(size)).astype(np.float32)
    weight_tile = (tent[:, None] * tent[None, :])[..., None]
    corners = [(i, j) for i in range(0, ph - size + 1, stride) for j in range(0, pw - size + 1, stride)
               if big_hole[i:i + size, j:j + size].any()]
    acc = np.zeros(big_masked.shape, np.float32)
    weight = np.zeros((ph, pw, 1), np.float32)
    for start in tqdm(range(0, len(corners), batch_size), disable=not progress, unit="batch",
                      desc=f"inpaint ({len(corners)} tiles)"):
        part = corners[start:start + batch_size]
        batch = {"masked": np.stack([big_masked[i:i + size, j:j + size] for i, j in part]),
                 "hole": np.stack([big_hole[i:i + size, j:j + size] for i, j in part])}
        for (i, j), tile in zip(part, np.asarray(complete(batch))):
            acc[i:i + size, j:j + size] += weight_tile * tile
            weight[i:i + size, j:j + size] += weight_tile
    filled = (acc / np.maximum(weight, 1e-12))[:h, :w]
    return np.where(hole > 0.5, filled, image).astype(np.float32)


def write_image(path, image: np.ndarray) -> None:
    from PIL import Image

    pixels = np.round(np.clip((image + 1.0) * 127.5, 0, 255)).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxvision.apps.inpaint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="A pix2pix inpainting run folder (config.json, checkpoints/).")
    parser.add_argument("--image", required=True, help="The image to complete (PNG, JPEG, ...).")
    parser.add_argument("--mask", required=True, help="Same size as the image; white = pixels to fill.")
    parser.add_argument("--out", required=True, help="Where to write the completed image (PNG).")
    parser.add_argument("--mode", default="resize", choices=MODES, help="How an image of another size is handled.")
    parser.add_argument("--convert", action="store_true", help="Convert a colour image for a grayscale run "
                        "(or the reverse) instead of refusing it.")
    parser.add_argument("--weights", default="generator", choices=("generator", "ema"),
                        help="G's own weights, or their exponential moving average with BatchNorm statistics "
                        "recomputed for it on the run's first 1024 training images (needs the run's dataset).")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from jaxvision.tasks import pix2pix

    try:
        complete, cfg = pix2pix.load_completer(args.run, weights=args.weights)
        image = read_image(args.image, cfg.model.channels, args.convert)
        hole = read_mask(args.mask, image.shape)
        out = inpaint(complete, image, hole, cfg.model.image_size, args.mode, progress=not args.no_progress)
    except (InpaintError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_image(args.out, out)
    print(f"Wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {int(hole.sum())} pixels filled, mode {args.mode}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
