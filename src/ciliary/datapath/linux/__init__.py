"""Linux plumbing the datapath stands on: network namespaces, veth pairs, routes, cgroups.

pyroute2 (netlink) is imported here and nowhere else. Functions take names and paths, return
plain values, and raise ``LinkError`` subclasses whose message names the object that failed, so
callers above never see a raw netlink error.
"""
