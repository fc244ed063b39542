"""Federation: the foreign trust domains this CA trusts, fetched and served to its sidecars."""
