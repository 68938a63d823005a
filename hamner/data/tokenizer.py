"""Tokenizers: the built-in byte tokenizer, a Hugging Face tokenizer.json, or a hub name (cache, then download).

Every tokenizer exposes the same small surface (`encode`, `encode_batch`, `decode`, `eos_id`,
`vocab_size`) and a `fingerprint` that identifies its vocabulary, so shards made with one
tokenizer are never fed to a model trained with another. Token ids are stored as uint16, so a
vocabulary over 65,536 is refused.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

from hamner.errors import DataError

EOT = "<|endoftext|>"
MAX_VOCAB = 65_536
# Short specs -> the hub repositories that hold them, newest name first: GPT-2's 50,257-token BPE moved from
# "gpt2" to "openai-community/gpt2", and a local cache may hold it under either.
HUB_ALIASES: dict[str, tuple[str, ...]] = {"gpt2": ("openai-community/gpt2", "gpt2")}


class Tokenizer(ABC):
    """What the data layer, trainer and chat need from a tokenizer."""

    name: str  # the spec it was loaded from
    vocab_size: int
    eos_id: int  # id of <|endoftext|>
    fingerprint: str  # stable hash of the vocabulary; identity for shard compatibility

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special tokens are added, a literal <|endoftext|> maps to eos_id."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts at once (parallel where the backend allows)."""

    @abstractmethod
    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """For each text, its token ids and the index of the character each token starts at."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Text of token ids, special tokens included."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the UTF-8 bytes, 256 is <|endoftext|>; needs nothing from outside."""

    def __init__(self) -> None:
        self.name = "bytes"
        self.vocab_size = 257
        self.eos_id = 256
        self.fingerprint = hashlib.sha256(f"bytes 0-255, {EOT}=256".encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eos_id)
            ids.extend(part.encode("utf-8"))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        out = []
        for text in texts:
            ids: list[int] = []
            starts: list[int] = []
            char = 0
            for i, part in enumerate(text.split(EOT)):
                if i:
                    ids.append(self.eos_id)
                    starts.append(char)
                    char += len(EOT)
                for c in part:
                    n = len(c.encode("utf-8"))
                    ids.extend(c.encode("utf-8"))
                    starts.extend([char] * n)
                    char += 1
            out.append((ids, starts))
        return out

    def decode(self, ids) -> str:
        """Text of `ids`; invalid UTF-8 and ids outside 0-256 (a model with a wider vocabulary can emit
        them) each read as U+FFFD, as Hugging Face tokenizers show invalid bytes."""
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            out.append(EOT if i == self.eos_id else "\ufffd")
            run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer loaded from a tokenizer.json file."""

    def __init__(self, name: str, path: Path) -> None:
        from tokenizers import Tokenizer as _Backend

        try:
            self._tok = _Backend.from_file(str(path))
        except Exception as e:  # the library raises plain Exceptions with multi-line text
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"cannot read tokenizer {path}: {reason}") from None
        self.name = name
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        if self.vocab_size > MAX_VOCAB:
            raise DataError(
                f"tokenizer {name} has {self.vocab_size:,} tokens; at most {MAX_VOCAB:,} fit in uint16 shards"
            )
        eos = self._tok.token_to_id(EOT)
        if eos is None:
            raise DataError(f"tokenizer {name} has no {EOT} token, which separates documents")
        self.eos_id = eos

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the id->token table, the merges and the added tokens; independent of the JSON layout."""
        vocab = sorted((i, t) for t, i in self._tok.get_vocab(with_added_tokens=True).items())
        model = json.loads(self._tok.to_str())["model"]
        merges = (m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or [])
        added = sorted(f"{a.content}\t{a.special}" for a in self._tok.get_added_tokens_decoder().values())
        h = hashlib.sha256(f"{model.get('type')}\n".encode())
        for part in ("\n".join(t for _, t in vocab), "\n".join(merges), "\n".join(added)):
            h.update(part.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # _fast (no offsets) since 0.21
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [(e.ids, [start for start, _ in e.offsets]) for e in encodings]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(spec: str) -> Tokenizer:
    """"bytes", a path to a tokenizer.json (or a folder holding one), or a Hugging Face hub name (the
    local cache first, then a download, as `transformers` finds tokenizers; "gpt2" is GPT-2's tokenizer,
    see HUB_ALIASES)."""
    if spec == "bytes":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return HFTokenizer(spec, path)
    if path.suffix == ".json" or spec.startswith((".", "/", "~")):
        raise DataError(f"tokenizer file not found: {path}")
    return HFTokenizer(spec, hub_tokenizer_file(spec))


def hub_tokenizer_file(spec: str) -> Path:
    """tokenizer.json of the hub repository `spec` (or of the repositories an alias names): from the local
    Hugging Face cache, else downloaded into it (not with HF_HUB_OFFLINE=1); one-line DataError naming the
    tokenizer when neither works."""
    import huggingface_hub as hub
    from huggingface_hub.errors import EntryNotFoundError

    repo_ids = HUB_ALIASES.get(spec, (spec,))
    for repo_id in repo_ids:
        try:
            found = hub.try_to_load_from_cache(repo_id, "tokenizer.json")
        except ValueError:  # not a valid repository name
            raise DataError(f"tokenizer {repo_id!r} is neither a tokenizer.json path nor a hub repository name"
                            ) from None
        if isinstance(found, str):
            return Path(found)
    reasons = []
    for repo_id in repo_ids:
        try:
            return Path(hub.hf_hub_download(repo_id, "tokenizer.json"))
        except (OSError, ValueError, EntryNotFoundError) as exc:  # offline, no such repository or file
            reasons.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    raise DataError(
        f"tokenizer {' or '.join(map(repr, repo_ids))} is not in the local Hugging Face cache and could not be "
        f"downloaded ({reasons[0]}); pass the path to its tokenizer.json instead "
        "(--tokenizer path/to/tokenizer.json) or use --tokenizer bytes"
    )
