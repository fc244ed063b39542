"""The control plane beside the CA: what sidecars register, watch and report over mTLS."""
