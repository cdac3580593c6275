"""Behaviour data: the contract, synthetic logs, Ray Data sample building, item text embeddings."""
