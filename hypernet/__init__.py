"""ZeTT-style hypernetwork: trained once per base model, it predicts input and LM-head rows for
any new tokenizer's tokens from their old-tokenizer pieces (`transplant run --method hypernet`).

Example:
    >>> from hypernet import HyperNet, TrainConfig, train  # doctest: +SKIP
    >>> train(TrainConfig(model="smollm2-135m-instruct", texts=["de.txt"], out="hn", steps=200))  # doctest: +SKIP
    >>> net = HyperNet.load("hn")  # doctest: +SKIP
"""

from .model import HyperNet, HyperNetConfig
from .train import TrainConfig, train

__all__ = ["HyperNet", "HyperNetConfig", "TrainConfig", "train"]
