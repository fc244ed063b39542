"""meshgate's certificate authority: issuance, state store, API, server and CLI."""
