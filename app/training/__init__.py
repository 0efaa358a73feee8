"""Learning: datasets, targets, losses, trainers. Imports app.core; never Qt."""
