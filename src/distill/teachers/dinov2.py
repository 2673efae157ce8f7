"""Teacher family: dinov2 (being written)."""
