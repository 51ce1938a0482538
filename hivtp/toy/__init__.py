"""Training a small LLaVA-1.5 from scratch on the procedural world (``make toy-model``).

The result is a normal llava-hf checkpoint (``hivtp/zoo/trained/toy-llava``) whose accuracy on the
offline mini-benchmarks is real, so that offline accuracy-vs-tokens curves mean something.

* :mod:`hivtp.toy.data`  the training / held-out question stream, tokenised as lmms-eval prompts it;
* :mod:`hivtp.toy.forward` the training forward passes (the tower to its feature layer, the shared-prefix loss);
* :mod:`hivtp.toy.objectives` the named, weighted training terms;
* :mod:`hivtp.toy.train` the deterministic, resumable training loop (with pruned image sequences) and its loss log;
* :mod:`hivtp.toy.evaluate` greedy accuracy per question family, scored as the benchmarks score;
* :mod:`hivtp.toy.probe` whether an object's place is linearly readable from the tokens the LLM sees.
"""

from .data import Batch, QAItem, encode_items, sample_items
from .evaluate import evaluate, family_accuracy
from .train import TrainConfig, train

__all__ = ["Batch", "QAItem", "sample_items", "encode_items", "TrainConfig", "train", "evaluate", "family_accuracy"]
