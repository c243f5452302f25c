"""``python -m realnet`` -- see :mod:`realnet.cli`."""
import sys

from .cli import main

sys.exit(main())
