"""KV caches the engine hands to the model, and the prefix cache.

The slot caches are preallocated for (max_batch, max_seq) per layer and addressed by position: row b of the cache is
slot b, one sequence, and token t of a forward is written at `pos[b, t]`. Before each forward the engine `bind`s the
rows the batch covers (a contiguous range, so reads are views), the write positions, and how many positions
attention reads (the longest live sequence in eager mode; all of max_seq for the static-shape compiled step). What
lies past a row's own length is hidden by the engine's attention mask, so rows of different lengths share one
forward.

  SlotKVCache      dense models: `update(layer, k, v)`, k/v (B, Hkv, T, hd) after RoPE. With `per_row_kernel` a
                   decode step's `lengths` let the CPU engine's attention kernel (cpu.py) write and read the rows
                   itself, each over its own length.
  SlotLatentCache  MLA (DeepSeek-V3): `update_latent(layer, c_kv, k_pe)`, the normalised latent (B, T, rank) and the
                   post-RoPE shared key (B, T, rope): 576 values per token and layer for V3 instead of 40,960
                   (docs/ARCHITECTURE.md 3); the model's absorbed decode path attends to them directly.
  PrefixCache      block-granular, hash-chained store of prompt-prefix KV with LRU eviction under a byte cap.
"""
from __future__ import annotations

from collections import OrderedDict

import torch


class SlotCache:
    """Common part: `streams`, each a list of per-layer tensors (max_batch, ...) with the position axis at `seq_dim`.
    One tensor per layer, not one (n_layers, ...) tensor: a compiled (CUDA-graph) step then writes each layer's
    token in place, where a slice of one big tensor made inductor copy the whole cache every step (Qwen2.5-1.5B at
    64 rows on an H100: ~6 of a 10 ms step)."""

    seq_dim: int  # position axis of each per-layer tensor

    def __init__(self, streams: list[list[torch.Tensor]]):
        self.streams = streams
        self.max_batch, self.max_seq = streams[0][0].shape[0], streams[0][0].shape[self.seq_dim]
        self.rows, self.row_idx, self.pos, self.length = slice(0, 1), None, None, 0
        self.per_row_kernel = False  # set by the engine: decode steps attend on cpu.decode_attention, unmasked
        self.lengths = None  # (B,) int64: each row's length after this decode step, when per_row_kernel

    def _at(self, row, seq) -> tuple:
        """Index of (row, positions seq) in a layer's tensor, every axis in between whole."""
        return (row,) + (slice(None),) * (self.seq_dim - 1) + (seq,)

    def bind(self, rows: slice, pos: torch.Tensor, length: int) -> None:
        """Set the next forward's rows (a slice of slots), positions pos (B, T) to write, and read length."""
        self.rows, self.pos, self.length = rows, pos, length
        self.row_idx = torch.arange(rows.start, rows.stop, device=pos.device)[:, None]  # (B, 1)
        self.lengths = pos[:, 0] + 1 if self.per_row_kernel and pos.shape[1] == 1 else None

    def _write_read(self, layer: int, new: list[torch.Tensor]) -> list[torch.Tensor]:
        """Write each new (B, T, ...) tensor at (row, pos) of its stream; return the stream's views of rows
        [rows] and positions [0, length)."""
        out = []
        for stream, x in zip(self.streams, new):
            s = stream[layer]  # (max_batch, ...)
            s[self._at(self.row_idx, self.pos)] = x  # index_put_: row_idx (B, 1) and pos (B, T) broadcast to (B, T)
            out.append(s[self._at(self.rows, slice(0, self.length))])
        return out

    # -- whole-row operations, for the prefix cache and the G-sample fan-out ---------------------------------------
    def read(self, row: int, start: int, stop: int) -> list[torch.Tensor]:
        """Positions [start, stop) of one row, every layer: per stream one (n_layers, ...) copy."""
        return [torch.stack([s[self._at(row, slice(start, stop))] for s in stream]) for stream in self.streams]

    def write(self, row: int, start: int, blocks: list[torch.Tensor]) -> None:
        """The inverse of `read`: blocks (n_layers, ...) into one row from position start."""
        for stream, b in zip(self.streams, blocks):
            at = self._at(row, slice(start, start + b.shape[self.seq_dim]))
            for s, blk in zip(stream, b):
                s[at] = blk

    def copy_row(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of slot src to slot dst (prefill once, fan out)."""
        for stream in self.streams:
            for s in stream:
                s[self._at(dst, slice(0, n))] = s[self._at(src, slice(0, n))]


class SlotKVCache(SlotCache):
    """Dense K/V, per layer (max_batch, Hkv, max_seq, hd), the layout attention reads: a decode step's keys of rows
    [0, B) are a (B * Hkv, length, hd) view with contiguous rows, multiplied in place (model.attend)."""

    seq_dim = 2

    def __init__(self, n_layers, max_batch, max_seq, n_kv, head_dim, dtype, device):
        shape = (max_batch, n_kv, max_seq, head_dim)
        super().__init__([[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
                          for _ in range(2)])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """k, v (B, Hkv, T, hd) -> the cached (B, Hkv, length, hd) keys and values, this forward's included."""
        k, v = self._write_read(layer, [k.transpose(1, 2), v.transpose(1, 2)])
        return k, v


class SlotLatentCache(SlotCache):
    """MLA latents, per layer (max_batch, max_seq, rank), and RoPE keys (.., rope)."""

    seq_dim = 1

    def __init__(self, n_layers, max_batch, max_seq, rank, rope_dim, dtype, device):
        super().__init__([[torch.zeros(max_batch, max_seq, d, dtype=dtype, device=device) for _ in range(n_layers)]
                          for d in (rank, rope_dim)])

    def update_latent(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor):
        """c_kv (B, T, rank), k_pe (B, T, rope) -> cached (B, length, rank), (B, length, rope)."""
        c, pe = self._write_read(layer, [c_kv, k_pe])
        return c, pe


def make_slot_cache(cfg, max_batch: int, max_seq: int, dtype, device) -> SlotCache:
    if cfg.mla:
        return SlotLatentCache(cfg.n_layers, max_batch, max_seq, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype, device)
    return SlotKVCache(cfg.n_layers, max_batch, max_seq, cfg.n_kv_heads, cfg.head_dim, dtype, device)


class PrefixCache:
    """Prompt-prefix KV reused across requests, in blocks of `block_size` tokens.

    Block i of a prompt is keyed by (id of block i-1's entry, the block's token ids), so a hit means the whole prefix
    up to that block matches token for token (a chain of exact keys: no hash collision can alias two prompts). Only
    whole blocks from token 0 hit, as DeepSeek's context cache (64-token units, docs/ARCHITECTURE.md 8.3). Entries are
    evicted least recently used first once the stored bytes pass `max_bytes`; a lookup touches a chain leaf-first so
    parents stay more recent than their children and are evicted after them.
    """

    def __init__(self, block_size: int = 64, max_bytes: int = 1 << 30):
        self.block_size, self.max_bytes = block_size, max_bytes
        self.entries: OrderedDict[tuple, tuple[int, list[torch.Tensor]]] = OrderedDict()  # key -> (id, tensors)
        self.bytes, self._next_id = 0, 1

    def _keys(self, ids: list[int], n_blocks: int):
        parent = 0
        for i in range(n_blocks):
            key = (parent, tuple(ids[i * self.block_size:(i + 1) * self.block_size]))
            entry = self.entries.get(key)
            yield key, entry
            if entry is None:
                return
            parent = entry[0]

    def lookup(self, ids: list[int], max_tokens: int) -> list[list[torch.Tensor]]:
        """The stored blocks of the longest cached prefix of `ids` no longer than max_tokens, in order."""
        found = [(k, e) for k, e in self._keys(ids, max_tokens // self.block_size) if e is not None]
        for key, _ in reversed(found):
            self.entries.move_to_end(key)
        return [e[1] for _, e in found]

    def insert(self, ids: list[int], n_tokens: int, read_block) -> None:
        """Store the whole blocks of ids[:n_tokens] that are missing; read_block(i) returns block i's tensors."""
        parent = 0
        for i in range(n_tokens // self.block_size):
            key = (parent, tuple(ids[i * self.block_size:(i + 1) * self.block_size]))
            entry = self.entries.get(key)
            if entry is None:
                tensors = read_block(i)
                size = sum(t.numel() * t.element_size() for t in tensors)
                if size > self.max_bytes:
                    return
                entry = (self._next_id, tensors)
                self._next_id += 1
                self.entries[key] = entry
                self.bytes += size
                self._evict(keep=key)
                if key not in self.entries:
                    return
            parent = entry[0]

    def _evict(self, keep) -> None:
        while self.bytes > self.max_bytes and self.entries:
            key, (_, tensors) = self.entries.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in tensors)
            if key == keep:
                return

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
