"""Mesh connections: handshake and peer checks, relay, lifetime."""
