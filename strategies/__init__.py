"""The learning side: model loading, the training loop, continual-learning strategies, evaluation.

Runs in a child process driven by a spec file; imports nothing of `daemon`.
"""

from strategies.avalanche_env import watch_torchvision

watch_torchvision()  # a CUDA torchvision wheel next to the CPU torch imports (strategies/avalanche_env.py)
