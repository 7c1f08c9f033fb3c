"""`python -m keras_tram`: the `keras-tram` command."""

import sys

from keras_tram.cli import main

sys.exit(main())
