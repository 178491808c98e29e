"""The world's words: colours and shapes with their synonyms, caption templates, paraphrases.

Plain Python (no torch), so the command line can offer the colours without loading a model.
Every colour and shape has a main word and synonyms, all single BPE tokens.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    word: str
    synonyms: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return (self.word, *self.synonyms)


@dataclass(frozen=True)
class Colour(Concept):
    rgb: tuple[int, int, int] = (0, 0, 0)


# Saturated, well separated hues: the pixel judge classifies by nearest palette entry.
COLOURS: tuple[Colour, ...] = (
    Colour("red", ("crimson", "scarlet"), (220, 30, 30)),
    Colour("orange", ("amber", "tangerine"), (245, 140, 20)),
    Colour("yellow", ("golden", "lemon"), (235, 225, 40)),
    Colour("green", ("emerald", "lime"), (40, 190, 50)),
    Colour("teal", ("turquoise", "aqua"), (30, 200, 200)),
    Colour("blue", ("azure", "cobalt"), (40, 70, 235)),
    Colour("purple", ("violet", "lilac"), (150, 50, 210)),
    Colour("pink", ("rose", "magenta"), (250, 110, 190)),
)

SHAPES: tuple[Concept, ...] = (
    Concept("circle", ("disc", "dot")),
    Concept("square", ("box", "block")),
    Concept("triangle", ("wedge",)),
    Concept("cross", ("plus",)),
    Concept("ring", ("hoop", "donut")),
)

TEMPLATES: tuple[str, ...] = (
    "a photo of a {colour} {shape}",
    "a {colour} {shape}",
    "{colour} {shape}",
    "a {colour} {shape} on a dark background",
    "an image of a {colour} {shape}",
    "a picture of a {colour} {shape}",
    "a drawing of a {colour} {shape}",
    "a small {colour} {shape}",
    "a large {colour} {shape}",
    "the {shape} is {colour}",
    "a {shape} that is {colour}",
    "one {colour} {shape} in the picture",
)
# Captions that name only one attribute, so each word also means something on its own.
COLOUR_ONLY_TEMPLATES: tuple[str, ...] = ("a {colour} shape", "something {colour}", "{colour}")
SHAPE_ONLY_TEMPLATES: tuple[str, ...] = ("a {shape}", "a photo of a {shape}", "{shape}")

PARAPHRASES: tuple[str, ...] = (
    "a {colour} {shape} in a small picture",
    "a dark image of one {colour} {shape}",
    "a {colour} {shape} that is small",
    "the picture is of a {colour} {shape}",
    "a photo of one large {colour} {shape}",
    "one {shape} that is {colour} on a dark background",
)
