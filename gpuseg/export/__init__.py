"""Customer lists for CRMs and ad platforms: identifiers normalised per platform and SHA-256 hashed."""
