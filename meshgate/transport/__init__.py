"""Byte streams: the lean socket stream, the TLS stream, mTLS contexts."""
