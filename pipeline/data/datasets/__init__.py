"""Dataset parsers, each reading its archive the way the reference code does."""
