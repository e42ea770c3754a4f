"""Convert pytorch-fid's FID-Inception weights (.pth) to jaxvision's .npz.

    python -m jaxvision.pretrained.inception_convert pt_inception-2015-12-05-6726825d.pth [OUT.npz]

The .pth is pytorch-fid's GitHub release file
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(jaxvision never downloads it). Reading it needs PyTorch - the CPU build is enough, no
GPU; the .npz written needs only NumPy and can be copied to machines without PyTorch.
OUT defaults to ~/.cache/jaxvision/fid_inception_v3.npz ($JAXVISION_FID_WEIGHTS, or
$JAXVISION_CACHE_DIR/fid_inception_v3.npz), where the FID tools look by default.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxvision.pretrained import inception


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxvision.pretrained.inception_convert",
        description=__doc__.split("\n\n")[0],
        epilog=f"Get the weights from {inception.WEIGHTS_URL}",
    )
    parser.add_argument("pth", help=f"pytorch-fid's {inception.WEIGHTS_FILENAME}")
    parser.add_argument("out", nargs="?", default=None,
                        help=f"output .npz (default: {inception.default_weights_path()})")
    args = parser.parse_args(argv)
    out = args.out or inception.default_weights_path()
    try:
        if not str(args.pth).endswith(".pth") and not str(args.pth).endswith(".pt"):
            parser.error(f"{args.pth}: expected pytorch-fid's .pth weight file")
        if not os.path.isfile(args.pth):
            print(inception.missing_weights_message(args.pth), file=sys.stderr)
            return 2
        path = inception.convert_pth_to_npz(args.pth, out)
    except (ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
