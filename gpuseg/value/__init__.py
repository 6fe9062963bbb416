"""Customer value and churn propensity: BTYD models (BG/NBD, Gamma-Gamma) and a churn classifier."""

from gpuseg.value.btyd import BetaGeoModel, DegenerateFitError, GammaGammaModel, value_fit_problem
from gpuseg.value.churn import ChurnModel, binary_metrics, calibration_table, risk_tier, roc_auc
from gpuseg.value.summary import btyd_summary, holdout_by_frequency

__all__ = [
    "BetaGeoModel",
    "ChurnModel",
    "DegenerateFitError",
    "GammaGammaModel",
    "binary_metrics",
    "btyd_summary",
    "calibration_table",
    "holdout_by_frequency",
    "risk_tier",
    "roc_auc",
    "value_fit_problem",
]
