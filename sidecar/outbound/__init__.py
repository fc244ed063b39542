"""The local app to mesh peers: tcp and http handlers, the mesh pool."""
