"""A tiny CLIP (real open_clip model and BPE tokenizer) for the 32x32 proving-ground world.

Storage trick: the 49,408 x 128 token embedding is 6.3M of the ~7M parameters, yet only the
few hundred token ids that occur in `data.training_vocabulary_texts()` ever receive a gradient
(training gives the embedding no weight decay, so Adam leaves every other row exactly at its
initial value). The weights file therefore keeps only those rows (`token_embedding.ids` and
`token_embedding.rows`); every other row is rebuilt at load time from the seeded random init
`initial_token_embedding()`, which training also starts from. Everything is stored in fp16 and
computed in fp32.
"""

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from torch import nn

from .data import training_vocabulary_texts

CONTEXT_LENGTH = 16
TEXT_WIDTH = 128
EMBED_DIM = 128
TOKEN_EMBEDDING_SEED = 1234
WEIGHTS_FILE = "tiny_clip.safetensors"
_EMBEDDING_KEY = "token_embedding.weight"


def _build_clip() -> open_clip.model.CLIP:
    vision = CLIPVisionCfg(layers=3, width=96, head_width=32, patch_size=4, image_size=32)
    text = CLIPTextCfg(
        context_length=CONTEXT_LENGTH, vocab_size=49408, width=TEXT_WIDTH, heads=4, layers=3
    )
    return open_clip.model.CLIP(EMBED_DIM, vision, text)


def initial_token_embedding(vocab_size: int = 49408) -> torch.Tensor:
    """The seeded init of the token embedding (open_clip's N(0, 0.02)), shared by train and load."""
    generator = torch.Generator().manual_seed(TOKEN_EMBEDDING_SEED)
    return torch.randn(vocab_size, TEXT_WIDTH, generator=generator) * 0.02


class TinyClip(nn.Module):
    """open_clip CLIP plus its tokenizer; images are float [N, 3, 32, 32] in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.model = _build_clip()
        self.tokenizer = SimpleTokenizer(context_length=CONTEXT_LENGTH)
        with torch.no_grad():
            self.model.token_embedding.weight.copy_(initial_token_embedding())

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts)).to(self.device)

    def text_states(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token states [N, L, W], pooled [N, W]) after the final LayerNorm.

        pooled is the final-LN state at the end-of-text token, the CLIP-L `pooled_output`
        convention (not the projected embedding).
        """
        tokens = self.tokenize(prompts)
        model = self.model
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        states = model.ln_final(x)
        end_of_text = tokens.argmax(dim=-1)  # the EOT id is the largest id in every row
        pooled = states[torch.arange(states.shape[0], device=states.device), end_of_text]
        return states, pooled

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings [N, EMBED_DIM] for contrastive matching."""
        return self.model.encode_text(self.tokenize(prompts), normalize=True)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [N, EMBED_DIM] of float images in [0, 1]."""
        return self.model.encode_image((images.to(self.device) - 0.5) * 2.0, normalize=True)


def trained_token_ids(tokenizer: SimpleTokenizer, extra_texts: Sequence[str] = ()) -> torch.Tensor:
    """Sorted ids of every token that training captions can contain (incl. SOT, EOT, pad);
    `extra_texts`: captions of a fine-tune beyond the colour world's (the identities world)."""
    tokens = tokenizer([*training_vocabulary_texts(), *extra_texts])
    return torch.unique(tokens)


def save_tiny_clip(clip: TinyClip, path: str, extra_texts: Sequence[str] = ()) -> None:
    state = {k: v.detach().half().contiguous() for k, v in clip.model.state_dict().items()}
    ids = trained_token_ids(clip.tokenizer, extra_texts)
    state["token_embedding.ids"] = ids
    state["token_embedding.rows"] = state.pop(_EMBEDDING_KEY)[ids].contiguous()
    save_file(state, path)


def load_tiny_clip(path: str, device: str | torch.device = "cpu") -> TinyClip:
    """Frozen (eval, no grad) TinyClip from a file written by `save_tiny_clip`."""
    state = load_file(path)
    ids, rows = state.pop("token_embedding.ids"), state.pop("token_embedding.rows")
    embedding = initial_token_embedding()
    embedding[ids] = rows.float()
    state[_EMBEDDING_KEY] = embedding
    clip = TinyClip()
    clip.model.load_state_dict({k: v.float() for k, v in state.items()})
    clip.requires_grad_(False)
    return clip.eval().to(device)


def soft_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    matches: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """CLIP loss with several true matches per row: cross-entropy against soft targets.

    matches[i, j] is True where caption j describes image i; with 40 classes in a batch many
    pairs match, and plain CLIP loss would push them apart as negatives.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.T
    targets = matches.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1)
    text_to_image = -(targets.T / targets.sum(0)[:, None] * F.log_softmax(logits.T, 1)).sum(1)
    return (image_to_text.mean() + text_to_image.mean()) / 2
