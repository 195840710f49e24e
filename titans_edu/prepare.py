"""``python -m titans_edu.prepare``: tokenise a corpus once into memmaps (:mod:`titans_edu.training.prepare`)."""

import sys

from .training.prepare import main

if __name__ == "__main__":
    sys.exit(main())
