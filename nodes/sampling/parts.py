"""Which texts a conditioning entry's tokens come from, and the pooled vector of each.

ComfyUI's pooled vector describes only the first text of an entry: CLIP pools the first chunk of
a long prompt, Conditioning (Concat) appends another prompt's tokens but keeps the first
prompt's dict, and an UnHype embedding packed before a Concat still describes the first
prompt alone. Yet every token reaches the UNet. A pooled vector cannot be read back from hidden
states, so UnHype nodes remember, by content, each block of tokens they encoded or saw together
with its own pooled vector; an entry is split into such blocks and the most strongly triggering
one decides the LoRA. A block that no UnHype node has seen is reported as unseen.
"""

import hashlib
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch

#: a row within this distance of row 0, relative to row 0's norm, starts a CLIP chunk. Chunk
#: starts agree to float noise (exactly, in one encode on the CPU); other rows differed by 3.5%
#: or more in tiny random CLIPs (measured with ComfyUI's classes; trained CLIPs not measured).
CHUNK_START_RTOL = 1e-2


@dataclass
class Part:
    """Tokens [start, end) of an entry and their pooled vector [1, D] (None: not seen)."""

    start: int
    end: int
    pooled: torch.Tensor | None


class BlockMemory:
    """Pooled vector of each token block UnHype nodes have seen, keyed by the block's content and
    the pooled width (SDXL and Flux-style blocks never mix).

    An LRU of `capacity` blocks (one pooled vector each, a few KB), shared by all nodes and
    threads: a Concat's second part is only found again if it was seen before it was joined.
    """

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._pooled: OrderedDict = OrderedDict()  # (pooled width, block width, tokens, digest)
        self._sizes: Counter = Counter()  # (pooled width, block width, tokens) -> blocks
        self._lock = threading.Lock()

    @staticmethod
    def _key(block: torch.Tensor, width: int) -> tuple:
        data = block.detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).digest()
        return (width, data.shape[-1], data.shape[0], digest)

    def remember(self, block: torch.Tensor, pooled: torch.Tensor) -> None:
        """Store pooled [1, D] for block [tokens, C]; a block already known keeps its vector."""
        pooled = pooled.detach().reshape(1, -1).to("cpu", torch.float32)
        key = self._key(block, pooled.shape[-1])
        with self._lock:
            if key in self._pooled:
                self._pooled.move_to_end(key)
                return
            self._pooled[key] = pooled.clone()
            self._sizes[key[:3]] += 1
            while len(self._pooled) > self.capacity:
                old, _ = self._pooled.popitem(last=False)
                self._sizes[old[:3]] -= 1
                if not self._sizes[old[:3]]:
                    del self._sizes[old[:3]]

    def recall(self, block: torch.Tensor, width: int) -> torch.Tensor | None:
        """The width-d pooled vector remembered for block, or None."""
        key = self._key(block, width)
        with self._lock:
            pooled = self._pooled.get(key)
            if pooled is not None:
                self._pooled.move_to_end(key)
            return pooled

    def lengths(self, block_width: int, width: int) -> list[int]:
        """Token counts of the known blocks of this block and pooled width, longest first."""
        with self._lock:
            return sorted((n for w, c, n in self._sizes if (w, c) == (width, block_width)),
                          reverse=True)

    def clear(self) -> None:
        with self._lock:
            self._pooled.clear()
            self._sizes.clear()


MEMORY = BlockMemory()


def split(cond: torch.Tensor | None, pooled: torch.Tensor, chunked: bool,
          memory: BlockMemory = MEMORY) -> list[Part]:
    """The parts of one entry (cond [1, T, C]); its own pooled vector ([1, D], D the width
    looked up) covers the first part.

    `chunked` (CLIP conditioning, SD1.x / SD2 / SDXL): every chunk is a part, found where it
    starts (chunk_starts), whatever the encoder's chunk length. Otherwise (e.g. Flux's T5
    tokens, where parts have any length) known blocks are matched from both ends and what lies
    between is one part.
    """
    if cond is None or cond.ndim != 3 or cond.shape[1] == 0:
        return [Part(0, 0, pooled)]
    tokens, width = cond[0], pooled.shape[-1]
    if chunked:
        bounds = [*chunk_starts(tokens), len(tokens)]
        parts = [Part(s, e, memory.recall(tokens[s:e], width)) for s, e in zip(bounds, bounds[1:])]
    else:
        parts = _known_ends(tokens, width, memory)
    if parts[0].pooled is None:
        parts[0].pooled = pooled
    return parts


def chunk_starts(tokens: torch.Tensor) -> list[int]:
    """Rows [T, C] of CLIP hidden states where a chunk starts: the rows equal to row 0.

    ComfyUI encodes a long prompt in chunks of its tokenizer's length, each opening with the
    start token, and CLIP's text transformer is causal: a chunk's first hidden state sees only
    that token at position 0, so it is the same vector in every chunk and every text from the
    same encoder joined by Conditioning (Concat), at any clip skip or prompt weight (weights leave
    the start token alone). A zeroed conditioning (every row 0) is one part.
    """
    first = tokens[0].float()
    scale = first.norm()
    if scale == 0:
        return [0]
    distance = (tokens.float() - first).norm(dim=-1)
    return (distance <= CHUNK_START_RTOL * scale).nonzero().flatten().tolist()


def _known_ends(tokens: torch.Tensor, width: int, memory: BlockMemory) -> list[Part]:
    lengths = memory.lengths(tokens.shape[-1], width)

    def first_known(spans, low: int) -> Part | None:
        """The first span that starts at or after `low` and is a known block."""
        for start, end in spans:
            if low <= start < end <= len(tokens):
                pooled = memory.recall(tokens[start:end], width)
                if pooled is not None:
                    return Part(start, end, pooled)
        return None

    front, start = [], 0
    while part := first_known(((start, start + n) for n in lengths), start):
        front.append(part)
        start = part.end
    back, end = [], len(tokens)
    while end > start and (part := first_known(((end - n, end) for n in lengths), start)):
        back.insert(0, part)
        end = part.start
    middle = [Part(start, end, None)] if end > start else []
    return front + middle + back
