"""Teacher family: depth_anything (being written)."""
