"""Teacher family: mae (being written)."""
