"""Torch/numpy building blocks of headsplat: no file formats, no CLI, no printing."""
