"""Hamner's data layer: tokenizers, llm.c token shards, prepare (text -> shards), the mixture sampler.

Heavy modules (tokenizers, datasets, the generators) load only when used.
"""
from hamner.data.mixture import MixtureSampler, open_sources, open_validation
from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import DataError

__all__ = ["DataError", "MixtureSampler", "Tokenizer", "load_tokenizer", "open_sources", "open_validation"]
