"""The kernel datapath: the only layer of ciliary that talks to BPF and the network stack.

Everything above it (agent, lab) gets typed Python objects; the C ABI is confined to
:mod:`ciliary.datapath.libbpf` and the struct mirrors in :mod:`ciliary.datapath.maps`.
"""
