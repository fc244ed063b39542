"""The web dashboard: one live page over the CA admin listener's mesh JSON (`mesh-ca dashboard`)."""
