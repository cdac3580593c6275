"""What every stage shares: config, schema, data, embeddings, features, model, checkpoints, metrics."""
