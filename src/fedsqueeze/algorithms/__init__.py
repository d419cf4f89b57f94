"""Federated algorithms behind one contract: see ``base.Algorithm``."""
