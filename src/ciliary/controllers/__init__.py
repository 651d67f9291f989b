"""The lab's kube-controller-manager and kube-scheduler roles, as Kubernetes API clients."""
