"""Kubernetes concepts, defined once: the resource types the lab's API server serves, their
names and scopes, validators and selectors, and typed objects. A low layer (above `core`, below
`policy`) so that the API server, the agent, the lab and the policy engine share one definition of
each: `names` (DNS-1123, label keys and values), `labelselector` (label selectors, Cilium labels),
`calicoselector` and `calico` (Calico's selectors, IPPool, IPAMConfiguration), `fields` (the
strict model base and error words of typed documents), `meta`/`core`/`apps`/`networking`/`cilium`
(object models, indexed by `objects`), `resources` (the registry), and the API machinery
(`fieldselector`, `patch`, `patchmeta`, `discovery`, `openapi`, `table`)."""
