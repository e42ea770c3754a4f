"""Translate a folder of your own images with a trained CycleGAN run.

    python -m jaxvision.apps.translate --run runs/cyclegan_fashion_mnist --direction a2b \\
        --input my_sneakers/ --output boots/ [--mode resize|tile]

Images of any size. The generator was trained on S x S images (the run's image size), so
each image is brought to that scale one of two ways, said on the console:

* ``resize`` (default): resized to S x S (bilinear), translated, resized back to its own
  size. Right when the images show one object framed like the training images.
* ``tile``: cut into S x S tiles at its own resolution (reflection-padded up to a whole
  number of tiles), each tile translated, the tiles stitched and cropped back. Keeps the
  detail of large images; each tile is normalised on its own, so seams can show.

Outputs are PNGs named after the inputs, in the input's mode (grayscale or RGB). A
grayscale image for an RGB model, or the reverse, is refused unless ``--convert``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MODES = ("resize", "tile")


def _fail(message: str):
    raise SystemExit(f"translate: error: {message}")


def _read(path, channels: int, convert: bool) -> np.ndarray:
    from PIL import Image

    from jaxvision.data.unpaired import image_mode

    mode = image_mode(path)
    wanted = "L" if channels == 1 else "RGB"
    if mode != wanted and not convert:
        kinds = {"L": "grayscale", "RGB": "RGB"}
        _fail(f"{path.name} is {kinds[mode]} but the run's model takes {kinds[wanted]} images: pass --convert to "
              f"convert it, or use a run trained on {kinds[mode]} images")
    with Image.open(path) as im:
        x = np.asarray(im.convert(wanted), np.float32) / 127.5 - 1.0
    return x[..., None] if x.ndim == 2 else x


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    channels = [np.asarray(Image.fromarray(x[..., c], "F").resize((width, height), Image.BILINEAR))
                for c in range(x.shape[-1])]
    return np.stack(channels, axis=-1)


def _tiles(x: np.ndarray, size: int):
    """(tiles [n, S, S, C], rows, cols): x reflection-padded to whole tiles (edge-padded
    where it is smaller than the padding reflection needs)."""
    h, w = x.shape[:2]
    rows, cols = -(-h // size), -(-w // size)
    pad = ((0, rows * size - h), (0, cols * size - w), (0, 0))
    x = np.pad(x, pad, mode="reflect" if rows * size - h < h and cols * size - w < w else "edge")
    tiles = x.reshape(rows, size, cols, size, -1).transpose(0, 2, 1, 3, 4).reshape(rows * cols, size, size, -1)
    return tiles, rows, cols


def _untile(tiles: np.ndarray, rows: int, cols: int, h: int, w: int) -> np.ndarray:
    size = tiles.shape[1]
    x = tiles.reshape(rows, cols, size, size, -1).transpose(0, 2, 1, 3, 4).reshape(rows * size, cols * size, -1)
    return x[:h, :w]


def _write(y: np.ndarray, path: Path):
    from PIL import Image

    pixels = np.round(np.clip((y + 1.0) * 127.5, 0, 255)).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def translate_folder(run, direction: str, input_dir, output_dir, *, mode: str = "resize", convert: bool = False,
                     batch_size: int = 16, progress: bool = True) -> list[Path]:
    """Translate every image of `input_dir` into `output_dir`; returns the written paths."""
    from jaxvision.data.unpaired import image_files
    from jaxvision.tasks.cyclegan import load_translator

    if mode not in MODES:
        _fail(f"--mode {mode!r}: choose one of {MODES}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        _fail(f"no input folder {input_dir}")
    try:
        files = image_files(input_dir)
    except ValueError as err:
        _fail(f"{input_dir} holds no images to translate (.png, .jpg, ...): {err}")
    try:
        fn, cfg = load_translator(run, direction)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    size, channels = cfg.model.image_size, cfg.data.channels
    how = (f"each image resized to {size}x{size}, translated, resized back" if mode == "resize"
           else f"each image cut into {size}x{size} tiles at its own resolution, translated tile by tile")
    print(f"Translating {len(files)} image(s) {direction} with {run} ({how}).", file=sys.stderr)
    images = [_read(p, channels, convert) for p in files]  # all read first: a bad file fails before any output
    output_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    written = []
    for path, x in tqdm(list(zip(files, images)), unit="img", disable=not progress, file=sys.stderr):
        h, w = x.shape[:2]
        if mode == "resize":
            y = np.asarray(fn(_resize(x, size, size)[None]))[0]
            y = _resize(y, h, w)
        else:
            tiles, rows, cols = _tiles(x, size)
            out = np.concatenate([np.asarray(fn(tiles[i:i + batch_size])) for i in range(0, len(tiles), batch_size)])
            y = _untile(out, rows, cols, h, w)
        target = output_dir / (path.stem + ".png")
        _write(y, target)
        written.append(target)
    print(f"Wrote {len(written)} image(s) to {output_dir}.", file=sys.stderr)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jaxvision.apps.translate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a CycleGAN training run's folder (its --workdir)")
    parser.add_argument("--direction", required=True, choices=("a2b", "b2a"))
    parser.add_argument("--input", required=True, help="folder of images to translate")
    parser.add_argument("--output", required=True, help="folder for the translations (created)")
    parser.add_argument("--mode", default="resize", choices=MODES, help="how images meet the model's size")
    parser.add_argument("--convert", action="store_true", help="convert grayscale <-> RGB to the model's kind")
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass (tile mode)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return translate_folder(args.run, args.direction, args.input, args.output, mode=args.mode, convert=args.convert,
                            batch_size=args.batch_size, progress=not args.no_progress)


if __name__ == "__main__":
    main()
