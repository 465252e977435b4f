"""Training on many processes: the torchrun environment and the parallel strategies."""
