"""The meshgate sidecar: identity lifecycle, mTLS proxies, HTTP handling, Cedar enforcement."""
