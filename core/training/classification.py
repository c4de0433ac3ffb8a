"""The classification objective (being built: see issue 16)."""
