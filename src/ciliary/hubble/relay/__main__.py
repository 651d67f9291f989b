"""``python -m ciliary.hubble.relay``: the relay without the ciliary CLI around it."""

import sys

from ciliary.hubble.relay.cmd import main

sys.exit(main(prog="python -m ciliary.hubble.relay"))
