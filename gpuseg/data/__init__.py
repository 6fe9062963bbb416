"""Input data: the canonical table contract, validation of user files, and the synthetic generator."""
