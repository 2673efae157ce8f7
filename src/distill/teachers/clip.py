"""Teacher family: clip (being written)."""
