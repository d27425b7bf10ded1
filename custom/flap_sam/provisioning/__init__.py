"""What the startup kits carry: each site's policy (allow-list, authorization, privacy scopes) and the builder that writes it."""
