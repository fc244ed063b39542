"""The sidecar's side of the control plane: registration, discovery and central policies."""
