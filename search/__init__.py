"""Search logic: benchmarks, embedding, indexing, ranking. Knows nothing of the UI."""
