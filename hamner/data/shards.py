"""llm.c token shards: a 256 x int32 header (magic 20240520, version 1, token count) then uint16 tokens.

A source directory holds `train_000000.bin`, ..., `val_000000.bin` and `meta.json`
(tokenizer identity, counts, the largest token id of each shard, where the text came from).
Shards are written atomically (temp file in the same directory, fsync, rename), so an interrupted
run never leaves a shard that looks complete, and readers check the header and the exact file
size. While prepare writes a directory it holds an `INCOMPLETE` marker, removed only after
meta.json is in place; readers refuse a directory that still has it. Shards from llm.c or
modded-nanogpt tools (`fineweb_train_000001.bin`, no meta.json) read the same way; their largest
token id is found by one vectorised scan when they are opened.

A shard may have a loss-mask sidecar beside it (`train_000000.mask`: the same header with magic
20240521, then one uint8 per token, 1 where the token counts as a training target; see
data.loss_masks). It is written before its shard and must match the shard's token count; a
shard without one counts every token.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from hamner.errors import DataError
from hamner.run.durable import fsync_path, replace_atomically

MAGIC = 20240520
MASK_MAGIC = 20240521
VERSION = 1
MASK_SUFFIX = ".mask"
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
META = "meta.json"
INCOMPLETE = "INCOMPLETE"  # present while prepare writes the directory
SPLITS = ("train", "val")


def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write `tokens` (ids < 65,536) as one llm.c shard, atomically."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 65_536):
        raise DataError(f"token ids must lie in 0..65535 to be stored as uint16 (got {tokens.min()}..{tokens.max()})")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    _atomic_write(Path(path), [header.tobytes(), tokens.astype("<u2", copy=False).tobytes()])


def read_shard(path: str | os.PathLike) -> np.memmap:
    """The tokens of one shard as a read-only uint16 memmap, after checking magic, version and size."""
    return _read_array(Path(path), MAGIC, "<u2", "shard")


def mask_path(shard: str | os.PathLike) -> Path:
    """Where the loss-mask sidecar of a shard lives (`train_000000.bin` -> `train_000000.mask`)."""
    return Path(shard).with_suffix(MASK_SUFFIX)


def write_mask(shard: str | os.PathLike, mask) -> None:
    """Write the loss-mask sidecar of `shard` (one 0/1 per token), atomically; write it before the shard."""
    mask = np.asarray(mask, dtype=np.uint8)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MASK_MAGIC, VERSION, mask.size)
    _atomic_write(mask_path(shard), [header.tobytes(), mask.tobytes()])


def read_mask(shard: str | os.PathLike, tokens: int) -> np.ndarray | None:
    """The loss mask of a shard of `tokens` tokens as a uint8 memmap, or None when it has no sidecar."""
    path = mask_path(shard)
    if not path.exists():
        return None
    mask = _read_array(path, MASK_MAGIC, "u1", "loss mask")
    if mask.size != tokens:
        raise DataError(f"{path} holds {mask.size:,} mask entries but its shard holds {tokens:,} tokens")
    return mask


def _read_array(path: Path, magic: int, dtype: str, what: str) -> np.ndarray:
    """The payload of a shard-format file after checking magic, version and exact size."""
    itemsize = np.dtype(dtype).itemsize
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if header.size < 3 or header[0] != magic:
        raise DataError(f"{path} is not a {'token shard' if magic == MAGIC else what} (bad magic number)")
    if header[1] != VERSION:
        raise DataError(f"{path}: unsupported {what} version {header[1]} (expected {VERSION})")
    count = int(header[2])
    if size != HEADER_BYTES + itemsize * count:
        held = (size - HEADER_BYTES) // itemsize
        raise DataError(f"{path} is truncated or corrupt: header says {count:,} tokens, file holds {held:,}")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_paths(directory: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split, in order (`train_000000.bin`, or llm.c's `name_train_000000.bin`)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return sorted(Path(directory).glob(f"*{split}_*.bin"))


def write_meta(directory: str | os.PathLike, meta: dict) -> None:
    """Write meta.json atomically; prepare writes it last, once every shard is in place."""
    _atomic_write(Path(directory) / META, [json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"])


def mark_incomplete(directory: str | os.PathLike) -> None:
    """Create `directory` if needed and mark it as being written (this also proves it is writable)."""
    _atomic_write(Path(directory) / INCOMPLETE, [b"hamner prepare is writing this directory; "
                                                b"if it was interrupted, run it again with --overwrite\n"])


def mark_complete(directory: str | os.PathLike) -> None:
    """Remove the INCOMPLETE marker (after meta.json is written)."""
    (Path(directory) / INCOMPLETE).unlink(missing_ok=True)
    fsync_path(Path(directory))


def largest_token_id(path: Path, tokens: np.ndarray, meta: dict | None) -> int:
    """The largest token id in shard `path`: as meta.json records it, else by scanning the memmap once."""
    recorded = (meta or {}).get("max_token_id", {})
    if isinstance(recorded, dict) and isinstance(recorded.get(path.name), int):
        return recorded[path.name]
    return int(tokens.max()) if tokens.size else -1


def read_meta(directory: str | os.PathLike) -> dict | None:
    """meta.json of a source directory, or None when there is none (shards from other tools)."""
    path = Path(directory) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def check_source_dir(directory: str | os.PathLike, tokenizer=None) -> dict | None:
    """Open a source directory's meta.json and refuse it when its tokenizer is not `tokenizer`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"no such data directory: {directory}")
    if (directory / INCOMPLETE).exists():
        raise DataError(f"{directory} is incomplete (hamner prepare did not finish writing it); "
                        "prepare it again with --overwrite")
    meta = read_meta(directory)
    if tokenizer is None:
        return meta
    if meta is None:
        warnings.warn(f"{directory} has no {META}; cannot check that its shards use tokenizer {tokenizer.name}",
                      stacklevel=2)
        return None
    if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        raise DataError(
            f"{directory} was tokenized with {meta.get('tokenizer')!r} "
            f"(fingerprint {meta.get('tokenizer_fingerprint')}), "
            f"but the model uses {tokenizer.name!r} (fingerprint {tokenizer.fingerprint}); "
            f"prepare it again with --tokenizer {tokenizer.name}"
        )
    return meta


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write `path` durably (see hamner.run.durable), creating its directory first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, chunks)
