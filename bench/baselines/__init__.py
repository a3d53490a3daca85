"""Baselines the service is measured against."""
