"""Seeding: one seed per job gives the same CPU results run after run."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (all devices) and return a numpy Generator for this job.

    Parameters
    ----------
    seed : int
        Non-negative seed.

    Returns
    -------
    numpy.random.Generator
        A generator derived from ``seed``; library code should take generators, not global state.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
