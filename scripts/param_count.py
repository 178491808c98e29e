"""Parameter counts of both hypernetwork variants for SD1.x cross-attention k/v at rank 6.

Builds the networks on the meta device (no memory, no weights), so it runs anywhere in a second:

    python scripts/param_count.py [--rank 6] [--hidden 512]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhype.hypernet import HyperNetConfig, HyperNetwork, parameter_count  # noqa: E402
from unhype.targets import Target  # noqa: E402

CONTEXT_DIM = 768
#: The 16 SD1.x transformer blocks (ComfyUI names, relative to the diffusion model) and widths.
SD1_BLOCKS = (
    [(f"input_blocks.{i}.1", 320) for i in (1, 2)]
    + [(f"input_blocks.{i}.1", 640) for i in (4, 5)]
    + [(f"input_blocks.{i}.1", 1280) for i in (7, 8)]
    + [("middle_block.1", 1280)]
    + [(f"output_blocks.{i}.1", 1280) for i in (3, 4, 5)]
    + [(f"output_blocks.{i}.1", 640) for i in (6, 7, 8)]
    + [(f"output_blocks.{i}.1", 320) for i in (9, 10, 11)]
)


def sd1_cross_kv_targets() -> list[Target]:
    """attn2.to_k and attn2.to_v of every SD1.x transformer block: 32 layers, 768 -> width."""
    return [
        Target(f"{block}.transformer_blocks.0.attn2.to_{kv}", CONTEXT_DIM, width)
        for block, width in SD1_BLOCKS
        for kv in ("k", "v")
    ]


def counts(rank: int = 6, hidden: int = 512) -> dict[str, int]:
    """Trainable parameter count per variant (the fixed random A0 buffers are not parameters)."""
    targets, result = sd1_cross_kv_targets(), {}
    for variant in ("paper", "compact"):
        config = HyperNetConfig(embed_dim=CONTEXT_DIM, rank=rank, hidden=hidden, variant=variant)
        with torch.device("meta"):
            result[variant] = parameter_count(HyperNetwork(config, targets))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    result = counts(args.rank, args.hidden)
    print(f"SD1.x cross-attention k/v: {len(sd1_cross_kv_targets())} layers, rank {args.rank}, "
          f"hidden {args.hidden}")
    for variant, count in result.items():
        print(f"  {variant:8s} {count:>13,d} parameters ({count / 1e6:.2f} M)")
    print(f"  compact / paper = {result['compact'] / result['paper']:.4f} "
          f"(1/{result['paper'] / result['compact']:.1f})")


if __name__ == "__main__":
    main()
