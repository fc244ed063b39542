"""The authorization step: an allow list (tcp) or Cedar, one protocol."""
