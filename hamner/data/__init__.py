"""Hamner's data layer: tokenizers, llm.c token shards, prepare (text -> shards), the mixture sampler and
the training batches it makes (data.batch).

Heavy modules (torch, tokenizers, datasets, the generators) load only when used.
"""
from hamner.data.mixture import Mixture, MixtureSampler, open_sources, open_validation
from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import DataError

__all__ = ["DataError", "Mixture", "MixtureSampler", "Tokenizer", "load_tokenizer", "open_sources", "open_validation"]
