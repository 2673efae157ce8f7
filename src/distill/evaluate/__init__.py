"""What one z carries: pixels, teacher fidelity and state probes against the mean image and PCA."""

from distill.evaluate.api import EvalConfig, GridFrames, Report, evaluate_student
from distill.evaluate.baselines import PixelPCA, mean_image
from distill.evaluate.probe import ProbeResult, ridge_probe

__all__ = [
    "EvalConfig",
    "GridFrames",
    "PixelPCA",
    "ProbeResult",
    "Report",
    "evaluate_student",
    "mean_image",
    "ridge_probe",
]
