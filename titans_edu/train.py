"""``python -m titans_edu.train``: the trainer's command line. The trainer is :mod:`titans_edu.training.trainer`."""

import sys

from .training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
