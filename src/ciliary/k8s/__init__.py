"""Kubernetes concepts, defined once: the resource types the lab's API server serves, their
names and scopes, validators and selectors. A low layer (above `core`, below `policy`) so that the
API server, the agent, the lab and the policy engine share one definition of each."""
