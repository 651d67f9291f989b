"""CNI plugins and the CNI runtime against a real agent (root: netns, BPF)."""
