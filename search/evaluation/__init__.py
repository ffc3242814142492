"""Evaluation: benchmark folders, metrics, and the evaluator that runs the app's own query path."""
