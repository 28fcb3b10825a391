"""Datasets: layouts on disk, label budgets, training clips, augmentation, generated videos."""
