"""Teacher family: sam (being written)."""
