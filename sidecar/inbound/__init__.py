"""Mesh peers to the local app: tcp and http handlers, the app pool."""
