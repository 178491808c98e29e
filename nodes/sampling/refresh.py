"""What the Conditioner does, redone at sampling time on an entry whose tokens changed after it."""

import logging

from .reading import RESOLVED_FOR, entry_parts, strongest, zeroed_out
from .wire import base_model_row, carrying, flagged, pack_embedding, packed_row


class PartsAtSampling:
    """SAMPLER_SAMPLE wrapper: an entry whose tokens changed after UnHype Conditioner (e.g.
    Conditioner, then Conditioning (Concat), which keeps only the first part's dict) gets the
    embedding of its most strongly triggering part, as if the Conditioner had come last. Works on
    the guider's own copies of the conds, made for this sampling run."""

    def __init__(self, network):
        self.network = network

    def __deepcopy__(self, memo):
        """Deep copies of a ModelPatcher's options share it: it holds nothing mutable."""
        return self

    def __call__(self, executor, guider, *args, **kwargs):
        for conds in (guider.conds or {}).values():
            for c in conds:
                self.refresh(c)
        return executor(guider, *args, **kwargs)

    def refresh(self, c: dict) -> None:
        packed = packed_row(c)
        tokens = c.get("cross_attn")
        if packed is None or tokens is None or c.get(RESOLVED_FOR) is tokens:
            return
        if not bool(flagged(packed)[0]):  # flag off: this entry runs the base model
            return
        c[RESOLVED_FOR] = tokens
        if zeroed_out(self.network, tokens):  # zeroed after the Conditioner: the base model
            c.update(carrying(c, base_model_row(self.network.config.embed_dim)))
            return
        node = "Apply Dynamic LoRA"
        parts = entry_parts(node, self.network, tokens, c.get("pooled_output"), 0)
        best, _ = strongest(self.network, [parts])[0]
        c.update(carrying(c, pack_embedding(parts[best].pooled)))
        unseen = [f"{p.start + 1}-{p.end}" for p in parts if p.pooled is None]
        if unseen:
            logging.warning(
                "%s: a conditioning entry changed after UnHype Conditioner (e.g. by Conditioning "
                "(Concat)); its tokens %s were NOT SEEN by the network, so a concept in them is "
                "not erased. Encode that text with UnHype Text Encode, or put an UnHype "
                "Conditioner on it before it is joined.", node, ", ".join(unseen))
