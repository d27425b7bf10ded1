"""Per-volume scoring of a site's split, the tables a researcher reads, and overlays a person looks at."""
