"""The CNI plugin executable: what a container runtime calls to plug a pod in. Holds no state;
every verb is a call to the node's agent over its socket."""
