"""Self-contained report pieces (inline SVG charts, no network, no plotting dependency)."""
