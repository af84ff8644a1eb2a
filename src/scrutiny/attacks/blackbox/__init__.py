"""Black-box attacks: they only query the model (a QueryModel), never its gradients."""
