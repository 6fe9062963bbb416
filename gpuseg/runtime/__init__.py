"""L0: device resolution, seeding, errors and atomic Arrow/JSON I/O shared by every layer."""
