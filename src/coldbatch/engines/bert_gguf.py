"""Turn a sentence-transformers BERT folder (safetensors weights + WordPiece vocabulary) into a GGUF file.

Why: no registry package ships an embedding model as GGUF, but several ship all-MiniLM-L6-v2 as the
sentence-transformers folder it is published as. llama.cpp runs BERT encoders natively (mean pooling
included), so converting the folder once at load time lets the llama-cpp engine serve embeddings with
the native code it already has: no torch, no onnxruntime.

What it writes is what llama.cpp's own `convert_hf_to_gguf.py` writes for a `BertModel` (architecture
`bert`, WordPiece vocabulary with the "phantom space" prefix, 2-D weights in F16 except the position and
token-type tables, everything else F32), using only the small part of GGUF v3 that needs: scalars,
strings, arrays of strings and of int32. Both file formats are read and written with numpy and struct;
the safetensors weights are memory-mapped, not copied.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np

from coldbatch.errors import ConfigError

GGUF_MAGIC: Final = b"GGUF"
ALIGNMENT: Final = 32
#: GGUF metadata value types (gguf.h: enum gguf_type)
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9
#: ggml tensor types
_GGML_F32, _GGML_F16 = 0, 1
_FILE_TYPE_F16: Final = 1  # LLAMA_FTYPE_MOSTLY_F16
_POOLING: Final = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2, "pooling_mode_lasttoken": 3}
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3
_EMBEDDINGS: Final = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER: Final = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_SKIPPED: Final = ("embeddings.position_ids", "pooler.")
_KEPT_F32: Final = ("position_embd.weight", "token_types.weight")
_NP_DTYPES: Final = {"F32": np.float32, "F16": np.float16, "BF16": None}


def is_gguf(path: Path) -> bool:
    """True if `path` is a file that starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def is_sentence_transformers_bert(folder: Path) -> bool:
    """True if `folder` holds what `convert` needs: config.json, model.safetensors and vocab.txt."""
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "vocab.txt"))


def convert(folder: Path, out: Path, *, name: str | None = None) -> None:
    """Write the GGUF of the sentence-transformers BERT model in `folder` to `out`.

    Raises:
        ConfigError: the folder is not a BERT model this converter understands.
    """
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        raise ConfigError(
            f"{folder}: only BERT sentence-transformers models can be converted "
            f"(model_type {config.get('model_type')!r})"
        )
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = _special_ids(folder, tokens)
    meta = _metadata(config, _pooling(folder), tokens, special, name or folder.name)
    tensors = list(_tensors(read_safetensors(folder / "model.safetensors"), int(config["num_hidden_layers"])))
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        _write_gguf(fh, meta, tensors)
    tmp.replace(out)


# ---------------------------------------------------------------------------------------------------
# Reading the sentence-transformers folder


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file, memory-mapped (read-only), by name."""
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _NP_DTYPES.get(info["dtype"], np.int64 if info["dtype"] == "I64" else None)
        if dtype is None:
            raise ConfigError(f"{path}: tensor {key} has dtype {info['dtype']}, which the converter cannot read")
        start, end = info["data_offsets"]
        out[key] = data[start:end].view(dtype).reshape(info["shape"])
    return out


def _read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`; `default` when the file does not exist."""
    if default is not None and not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _pooling(folder: Path) -> int:
    """llama.cpp's pooling type from the sentence-transformers Pooling module (mean when not described)."""
    modules = _read_json(folder / "modules.json", [])
    path = next(
        (
            m.get("path")
            for m in modules
            if isinstance(m, dict) and m.get("type") == "sentence_transformers.models.Pooling"
        ),
        None,
    )
    cfg = _read_json(folder / (path or "1_Pooling") / "config.json", {"pooling_mode_mean_tokens": True})
    for key, value in _POOLING.items():
        if cfg.get(key):
            return value
    raise ConfigError(f"{folder}: pooling {cfg} is not supported (mean, CLS or last token)")


def _special_ids(folder: Path, tokens: list[str]) -> dict[str, int]:
    """Ids of [CLS] (llama.cpp's BOS for WordPiece), [SEP], [UNK], [PAD], [MASK]."""
    index = {t: i for i, t in enumerate(tokens)}
    cfg = _read_json(folder / "tokenizer_config.json", {})
    names = {
        "bos": "cls_token",
        "seperator": "sep_token",
        "unknown": "unk_token",
        "padding": "pad_token",
        "mask": "mask_token",
    }
    defaults = {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
    }
    out = {}
    for key, field in names.items():
        text = cfg.get(field) or defaults[field]
        text = text.get("content") if isinstance(text, dict) else text
        if text not in index:
            raise ConfigError(f"{folder}: the vocabulary has no {text!r} token")
        out[key] = index[text]
    return out


def _metadata(
    config: dict[str, Any], pooling: int, tokens: list[str], special: dict[str, int], name: str
) -> list[tuple[str, int, Any]]:
    """GGUF key/value pairs: (key, gguf type, value)."""
    control = set(special.values())
    texts = [t if i in control else (t[2:] if t.startswith("##") else "\u2581" + t) for i, t in enumerate(tokens)]
    types = [_TOKEN_CONTROL if i in control else _TOKEN_NORMAL for i in range(len(tokens))]
    meta: list[tuple[str, int, Any]] = [
        ("general.architecture", _STR, "bert"),
        ("general.name", _STR, name),
        ("general.file_type", _U32, _FILE_TYPE_F16),
        ("bert.block_count", _U32, int(config["num_hidden_layers"])),
        ("bert.context_length", _U32, int(config["max_position_embeddings"])),
        ("bert.embedding_length", _U32, int(config["hidden_size"])),
        ("bert.feed_forward_length", _U32, int(config["intermediate_size"])),
        ("bert.attention.head_count", _U32, int(config["num_attention_heads"])),
        ("bert.attention.layer_norm_epsilon", _F32, float(config.get("layer_norm_eps", 1e-12))),
        ("bert.attention.causal", _BOOL, False),
        ("bert.pooling_type", _U32, pooling),
        ("tokenizer.ggml.model", _STR, "bert"),
        ("tokenizer.ggml.tokens", _ARR, (_STR, texts)),
        ("tokenizer.ggml.token_type", _ARR, (_I32, types)),
        ("tokenizer.ggml.token_type_count", _U32, int(config.get("type_vocab_size", 1))),
    ]
    meta += [(f"tokenizer.ggml.{key}_token_id", _U32, value) for key, value in special.items()]
    return meta


def _tensors(weights: dict[str, np.ndarray], layers: int) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array in its stored dtype) for every tensor llama.cpp's BERT graph uses."""
    names = dict(_EMBEDDINGS)
    for i in range(layers):
        for hf, gg in _LAYER.items():
            names[f"encoder.layer.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
            names[f"encoder.layer.{i}.{hf}.bias"] = f"blk.{i}.{gg}.bias"
    for key, array in weights.items():
        hf = key.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias")
        if hf.startswith(_SKIPPED):
            continue
        if hf not in names:
            raise ConfigError(f"unexpected tensor {key!r}: not a plain BERT encoder")
        gg = names[hf]
        f16 = array.ndim == 2 and gg not in _KEPT_F32 and not gg.endswith("_norm.weight")
        yield gg, np.ascontiguousarray(array, dtype=np.float16 if f16 else np.float32)


# ---------------------------------------------------------------------------------------------------
# Writing GGUF v3


def _write_gguf(fh: BinaryIO, meta: list[tuple[str, int, Any]], tensors: list[tuple[str, np.ndarray]]) -> None:
    fh.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    for key, kind, value in meta:
        fh.write(_string(key) + struct.pack("<I", kind) + _value(kind, value))
    offset = 0
    for name, array in tensors:
        dims = tuple(reversed(array.shape))  # ggml's ne[0] is the innermost (contiguous) dimension
        kind = _GGML_F16 if array.dtype == np.float16 else _GGML_F32
        fh.write(_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset))
        offset += _padded(array.nbytes)
    fh.write(b"\0" * (_padded(fh.tell()) - fh.tell()))
    for _, array in tensors:
        fh.write(array.tobytes())
        fh.write(b"\0" * (_padded(array.nbytes) - array.nbytes))


def _padded(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(kind: int, value: Any) -> bytes:
    if kind == _STR:
        return _string(value)
    if kind == _ARR:
        item_kind, items = value
        head = struct.pack("<IQ", item_kind, len(items))
        if item_kind == _STR:
            return head + b"".join(_string(x) for x in items)
        return head + np.asarray(items, dtype="<i4").tobytes()
    return struct.pack({_U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?"}[kind], value)


__all__ = ["convert", "is_gguf", "is_sentence_transformers_bert", "read_safetensors"]
