"""Making adapters: the training loop, OSRM's initialisation, the training pipeline and the demo zoo."""
