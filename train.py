"""Train the full-covariance VAE: ``python train.py --help``. The command lives in :mod:`vae.train`."""
import sys

from vae.train import main

if __name__ == "__main__":
    sys.exit(main())
