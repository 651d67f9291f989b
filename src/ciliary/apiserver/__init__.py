"""The lab's Kubernetes API server: kube-apiserver's REST protocol over a real etcd."""
