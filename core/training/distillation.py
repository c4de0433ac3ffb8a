"""The distillation objective (being built: see issue 16)."""
