"""The learning side: model loading, the training loop, continual-learning strategies, evaluation.

Runs in a child process driven by a spec file; imports nothing of `daemon`.
"""
