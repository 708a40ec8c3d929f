"""Robustness measurements: corruptions and their metrics, calibration, attacks, OOD detection."""
