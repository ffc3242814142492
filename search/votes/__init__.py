"""Votes: the SQLite store, Hub sync, the arena of systems and the report of what votes say."""
