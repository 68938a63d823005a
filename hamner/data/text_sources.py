"""Documents from local files and Hugging Face datasets, as plain strings for `data.prepare`.

Local files by suffix: text (.txt, .md; documents split by <|endoftext|>, blank lines or a given
separator, or the whole file as one document), JSON lines and Parquet (a text field, or chat
`messages: [{role, content}]` rendered in the chat format), and subtitles (.vtt, .srt) cleaned
to their spoken text. Anything else that is not an existing path is taken as a hub dataset name
and streamed. Every problem is a one-line DataError.
"""
from __future__ import annotations

import html
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hamner.data.chat_format import MARKERS, format_conversation
from hamner.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
SUBTITLE_SUFFIXES = {".vtt", ".srt"}
SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | SUBTITLE_SUFFIXES | {".parquet"}
BLANK = "blank"  # --split-docs value meaning "documents are separated by blank lines"
EOT = "<|endoftext|>"
CHAT_MARKERS = tuple(MARKERS.values())
_CHUNK = 1 << 22


@dataclass(frozen=True)
class ReadOptions:
    """How to cut sources into documents (the prepare command's flags)."""

    separator: str = EOT  # or BLANK
    whole: bool = False  # one document per text file
    text_field: str = "text"
    hf_config: str | None = None
    hf_split: str = "train"


def iter_documents(source: str, opts: ReadOptions) -> Iterator[str]:
    """Non-empty documents of one source (a file, a folder of files, or a hub dataset name), stripped."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no files of a known type ({', '.join(sorted(SUFFIXES))})")
        for f in files:
            yield from _file_documents(f, opts)
    elif path.is_file():
        yield from _file_documents(path, opts)
    elif _looks_like_path(source, path):
        raise DataError(f"no such file: {source}")
    else:
        yield from _hub_documents(source, opts)


def _looks_like_path(source: str, path: Path) -> bool:
    """A missing local file rather than a hub dataset name ("org/name")."""
    explicit = source.startswith((".", "/", "~"))
    return explicit or path.suffix.lower() in SUFFIXES or (path.parent != Path(".") and path.parent.is_dir())


def _file_documents(path: Path, opts: ReadOptions) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        docs = _text_documents(path, opts)
    elif suffix in JSONL_SUFFIXES:
        docs = _jsonl_documents(path, opts.text_field)
    elif suffix == ".parquet":
        docs = _parquet_documents(path, opts.text_field)
    elif suffix in SUBTITLE_SUFFIXES:
        docs = iter([subtitle_text(path.read_text(encoding="utf-8"))])
    else:
        known = ", ".join(sorted(SUFFIXES))
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; expected one of {known}")
    try:
        for doc in docs:
            doc = _clean(doc)
            if doc:
                yield doc
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _clean(doc: str) -> str:
    """Strip a document; chat-format documents keep the newline that ends their last turn."""
    doc = doc.strip()
    return doc + "\n" if doc.startswith(CHAT_MARKERS) else doc


def _text_documents(path: Path, opts: ReadOptions) -> Iterator[str]:
    """Documents of a text file, read in chunks so big files stream."""
    if opts.whole:
        yield path.read_text(encoding="utf-8")
        return
    splitter = re.compile(r"\n[ \t\r]*\n") if opts.separator == BLANK else re.compile(re.escape(opts.separator))
    buf = ""
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(_CHUNK):
            parts = splitter.split(buf + chunk)
            buf = parts.pop()
            yield from parts
    yield buf


def _record_text(record: dict, field: str, where: str) -> str:
    """The text of one JSON/Parquet/dataset record (its text field, or its chat messages formatted), refused
    when it is not valid Unicode (JSON can spell a lone surrogate, `\\ud800`, that no encoder accepts)."""
    text = _record_text_unchecked(record, field, where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where}: the text holds a lone surrogate {text[exc.start]!r} at character {exc.start}, "
                        "which is not valid Unicode; fix or drop the record") from None
    return text


def _record_text_unchecked(record: dict, field: str, where: str) -> str:
    if field in record and isinstance(record[field], str):
        return record[field]
    if field not in record and isinstance(record.get("messages"), list):
        try:
            return format_conversation(record["messages"])
        except (KeyError, TypeError, ValueError, DataError) as e:
            raise DataError(f"{where}: bad chat messages ({e})") from None
    if field in record:
        raise DataError(f"{where}: field {field!r} is {type(record[field]).__name__}, not text")
    fields = ", ".join(map(str, record)) or "none"
    raise DataError(f"{where}: no field {field!r} (fields: {fields}); choose one with --text-field")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path} line {n}: invalid JSON ({e})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}")
            yield _record_text(record, field, f"{path} line {n}")


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except ImportError:
        raise DataError("reading .parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable Parquet file ({type(e).__name__})") from None
    names = pf.schema_arrow.names
    column = field if field in names else "messages" if "messages" in names else None
    if column is None:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(names)}); choose one with --text-field")
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield _record_text({column: value}, field, f"{path} row {row}")
            row += 1


def _hub_documents(name: str, opts: ReadOptions) -> Iterator[str]:
    """Stream a Hugging Face dataset; an unknown or unreachable dataset is a one-line error."""
    try:
        import datasets
        from huggingface_hub.utils import logging as hub_logging

        datasets.logging.set_verbosity_error()
        hub_logging.set_verbosity_error()  # no retry chatter: one line on failure
        stream = iter(datasets.load_dataset(name, opts.hf_config, split=opts.hf_split, streaming=True))
        first = next(stream, None)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot open Hugging Face dataset {name!r} (offline, or not a dataset?): {reason}") from None
    if first is None:
        return
    records = itertools.chain([first], stream)
    while True:
        try:
            record = next(records, None)
        except Exception as e:  # the connection dropped mid-stream
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            raise DataError(f"lost Hugging Face dataset {name!r} while streaming: {reason}") from None
        if record is None:
            return
        doc = _clean(_record_text(record, opts.text_field, f"dataset {name}"))
        if doc:
            yield doc


_TIMING = re.compile(r"^\s*(\d+:)?\d{1,2}:\d{2}[.,]\d{3}\s*-->")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")
_FILE_HEADER = re.compile(r"^(WEBVTT|Kind:|Language:)")
_BLOCK = re.compile(r"^(NOTE|STYLE|REGION)\b")


def subtitle_text(raw: str) -> str:
    """Spoken text of a .vtt/.srt file: no cue numbers, timestamps, tags, metadata or repeated lines."""
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").split("\n")
    out: list[str] = []
    in_cues = False  # past the file header
    skip_block = False  # inside a NOTE/STYLE/REGION block, which runs to the next blank line
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            skip_block = False
            continue
        if _TIMING.match(stripped):
            in_cues = True
            continue
        if skip_block or (not in_cues and _FILE_HEADER.match(stripped)):
            continue
        if _BLOCK.match(stripped) and (i == 0 or not lines[i - 1].strip()):
            skip_block = True
            continue
        if i + 1 < len(lines) and _TIMING.match(lines[i + 1]):
            continue  # cue number or identifier
        text = " ".join(html.unescape(_TAG.sub("", stripped)).split())
        if text and (not out or text != out[-1]):
            out.append(text)
    return " ".join(out)
