"""L2: the jobs. Each module has ``run(cfg) -> dict``; only jobs see a Hydra DictConfig."""
