"""What every UnHype node's schema shares: the menu category, the UNHYPE socket, search words."""

from comfy_api.latest import io

CATEGORY = "UnHype"

#: the socket that carries an unhype.UnHypeNetwork from the Loader or the Trainer
UnHype = io.Custom("UNHYPE")

#: what people type into the node search for this pack (each node adds its own words)
ERASURE = [
    "concept erasure", "erase concept", "remove concept", "unlearning", "machine unlearning",
    "forget", "ESD", "safety", "censor", "NSFW filter",
]
