"""The ``ciliary`` command line: ``cilium-dbg``'s commands and output shapes, over ciliary's agents.

Kept as one small module per subcommand (``status``, ``endpoint``, ``bpf``, ``monitor``, ``lab``,
...), each registering its argparse subparser and rendering with rich, so that a command reads
top to bottom next to the upstream command it mirrors. The CLI reaches agents only through
``ciliary.client`` (their unix sockets) and labs only through ``ciliary.lab.manager``; it never
imports the agent or the datapath, so it shows exactly what the agent's API says.
"""
