"""Where datasets come from: built-in generators, verified downloads, local copies."""
