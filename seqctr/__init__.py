"""seqctr: train, tune and serve BERT + LSTM CTR models on user behaviour sequences with Ray."""

__version__ = "0.1.0"
