"""``python -m ciliary.hubble.relay``: the relay without the ciliary CLI around it."""

from ciliary.hubble.relay.cmd import main
from ciliary.processes import exit_now

# main returns once the relay stopped (server closed, pid file removed): skip the ~0.1 s of
# finalizing grpc/protobuf that the lab's teardown would wait for
exit_now(main(prog="python -m ciliary.hubble.relay"))
