"""Identity lifecycle: credentials, bootstrap and rotation."""
