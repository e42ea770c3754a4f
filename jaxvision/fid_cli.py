"""FID / Inception Score / KID command line with every image source, including
``checkpoint:WORKDIR`` (EMA samples of one of our GAN runs).

    python -m jaxvision.fid_cli SOURCE_A SOURCE_B [--metrics fid,kid,is] [--num-images N]

(``python -m jaxvision.metrics.cli`` runs this too.) An entry point at the top: it
registers the task layer's sources into ``jaxvision.metrics.sources``, then runs the
command of ``jaxvision.metrics.cli``, so that ``metrics`` never imports ``tasks``.
"""

from __future__ import annotations

import sys


def register_sources() -> None:
    from jaxvision.tasks.gan import register_checkpoint_source

    register_checkpoint_source()  # `checkpoint:WORKDIR`


def main(argv=None, net_factory=None) -> int:
    from jaxvision.metrics import cli

    register_sources()
    return cli.main(argv, net_factory)


if __name__ == "__main__":
    sys.exit(main())
