"""``python -m vae.toy mse|mle|batched``: see :mod:`vae.toy.cli`."""
import sys

from vae.toy.cli import main

__all__: list = []

if __name__ == "__main__":
    sys.exit(main())
