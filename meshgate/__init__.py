"""What mesh_ca and sidecar both use; imports neither of them."""
