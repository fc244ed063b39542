"""meshgate's certificate authority: SPIFFE identity, issuance, state, API and CLI."""
