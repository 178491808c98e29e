"""What people type into the node search for this pack (the nodes' SEARCH_ALIASES)."""

ERASURE = [
    "concept erasure", "erase concept", "remove concept", "unlearning", "machine unlearning",
    "forget", "ESD", "safety", "censor", "NSFW filter",
]
