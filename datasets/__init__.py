"""Datasets: synthetic scenes with ground truth, trajectory sampling, readers, metrics."""
