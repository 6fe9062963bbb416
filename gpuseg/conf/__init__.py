"""Hydra configs shipped with gpuseg (a package so Hydra can find them after any install)."""
