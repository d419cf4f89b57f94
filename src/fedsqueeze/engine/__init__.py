"""The embedded simulation engine: round loop, client state store, checkpoints, worker pool."""
