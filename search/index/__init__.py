"""Indexing: gallery sources, image loading, building and loading index directories, FAISS, the Hub."""
