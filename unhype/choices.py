"""Option names shared by the command line, the settings and the trainer, in a module that imports
nothing, so the command line can offer them without loading torch."""

OBJECTIVES = ("trajectory", "direct")

#: the proving ground's model family, and the headless `model` value that loads it
PROVING_GROUND = "proving-ground"
