"""The control plane inside `mesh-ca serve`: registration, discovery and central policies."""
