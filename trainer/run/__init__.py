"""A run's folder and what it writes: checkpoints, metrics, tracker, pictures; signals that stop it cleanly."""
