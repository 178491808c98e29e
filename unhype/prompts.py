"""Prompts for training: templates, "concept -> anchor" parsing, presets and a retain list."""

import re
from dataclasses import dataclass

GENERIC_TEMPLATES = [
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a close-up photo of {}",
    "a painting of {}",
    "a drawing of {}",
    "a sketch of {}",
    "a digital illustration of {}",
    "a watercolor of {}",
    "an oil painting of {}",
    "a 3d render of {}",
    "a cartoon of {}",
    "a high quality photo of {}",
    "a blurry photo of {}",
    "a black and white photo of {}",
    "a detailed photograph of {}",
    "a professional photo of {}",
    "a bright photo of {}",
    "a dark photo of {}",
    "a cropped photo of {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "{} in the wild",
    "{} on a table",
    "{} in a city street",
    "{} at sunset",
    "a poster featuring {}",
    "a low resolution photo of {}",
    "an artistic rendition of {}",
    "a stock photo of {}",
]

PERSON_TEMPLATES = [
    "{}",
    "a photo of {}",
    "a portrait of {}",
    "a headshot of {}",
    "a close-up portrait of {}",
    "a painting of {}",
    "a drawing of {}",
    "a sketch of {}",
    "a caricature of {}",
    "a cartoon of {}",
    "{} smiling",
    "{} laughing",
    "{} looking at the camera",
    "{} wearing a suit",
    "{} wearing a hat",
    "{} on the red carpet",
    "{} giving a speech",
    "{} at a press conference",
    "{} in an interview",
    "{} on stage",
    "{} walking in the street",
    "{} sitting in a cafe",
    "{} at the beach",
    "{} in a park",
    "{} in a movie scene",
    "a magazine cover with {}",
    "a black and white photo of {}",
    "a candid photo of {}",
    "a selfie of {}",
    "a professional photo of {}",
    "an oil painting of {}",
    "a watercolor portrait of {}",
    "a 3d render of {}",
    "a pencil drawing of {}",
    "a poster of {}",
    "{} in the rain",
    "{} at night",
    "{} with friends",
    "{} reading a book",
    "{} playing guitar",
]

_SUBJECTS = [
    "a dog", "a cat", "a horse", "a cow", "a sheep", "a bird", "a duck", "a fish",
    "a rabbit", "a squirrel", "a bicycle", "a car", "a bus", "a train", "a boat",
    "an airplane", "a motorcycle", "a truck", "a house", "a bridge", "a tower", "a church",
    "a lighthouse", "a tree", "a flower", "a mountain", "a lake", "a river", "a forest",
    "a beach", "a desert", "a city skyline", "a street", "a market", "a kitchen",
    "a living room", "a bedroom", "an office", "a library", "a garden", "a chair", "a table",
    "a lamp", "a clock", "a book", "a cup of coffee", "a bowl of fruit", "a pizza",
    "a sandwich", "a cake", "an apple", "a banana", "a teapot", "a guitar", "a piano",
    "a laptop", "a phone", "a backpack", "an umbrella", "a kite", "a ball", "a hat",
    "a pair of shoes", "a man", "a woman", "a child", "a family", "a group of friends",
    "an old man", "a young woman", "a chef", "a doctor", "a farmer", "a soldier",
    "a dancer", "a runner",
]
_SETTINGS = ["", " in the morning light", " on a rainy day", " in winter", " at night"]


def builtin_retain_prompts() -> list[str]:
    """A few hundred everyday prompts, varied in subject and light, kept untouched in training."""
    prompts = []
    for index, subject in enumerate(_SUBJECTS):
        for offset in range(4):
            setting = _SETTINGS[(index + offset) % len(_SETTINGS)]
            template = GENERIC_TEMPLATES[(index * 7 + offset * 3) % len(GENERIC_TEMPLATES)]
            prompts.append(template.format(subject) + setting)
    return prompts


#: the anchor written "concept -> -": no anchor word, the erase prompt without the concept
DROP_ANCHOR = "-"


@dataclass(frozen=True)
class Concept:
    name: str
    anchor: str  # put in the erase prompt's place of the concept; "": the concept left out


def parse_concepts(text: str, default_anchor: str = "") -> list[Concept]:
    """One concept per line, optionally "concept -> anchor"; blank lines and # comments skipped."""
    concepts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, arrow, anchor = line.partition("->")
        name, anchor = name.strip(), anchor.strip()
        if not name:
            raise ValueError(f"line {number}: no concept before '->' in {line!r}")
        if not arrow:
            anchor = default_anchor
        concepts.append(Concept(name, "" if anchor == DROP_ANCHOR else anchor))
    if not concepts:
        raise ValueError("no concepts to erase: write one per line, e.g. 'tench -> fish'")
    names = [c.name.lower() for c in concepts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"concepts listed twice: {duplicates}")
    return concepts


def parse_prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def fill(template: str, subject: str) -> str:
    """Template with the subject; an empty subject leaves the slot out, so an empty anchor is
    the erase prompt without its concept ("a photo of a {} circle" -> "a photo of a circle")."""
    return re.sub(r"\s+", " ", template.format(subject)).strip()
