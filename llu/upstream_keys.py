"""Config keys that upstream CoOp, CoCoOp and ProGrad (BeierZhu/Prompt-align) name otherwise: the one
place that maps them, so their config files and command lines work here unchanged.

``translate(key, value)`` gives the key and value this project reads, or None for a key that has no
effect here (said once, with what it did upstream).
"""
from llu.utils import UserError, dotted_items

# Upstream key -> ours.
ALIASES = {
    "TRAINER.COOP.PREC": "TRAINER.PREC",  # one precision key for every trainer here
    "TRAINER.COCOOP.PREC": "TRAINER.PREC",
    "LOSS.LAMBDA": "TRAINER.PROGRAD.LAMBDA",  # ProGrad's lambda
    "LOSS.T": "TRAINER.PROGRAD.T",  # ProGrad's distillation temperature
}

# Upstream keys without an effect here, and why.
IGNORED = {
    "LOSS.NAME": "ProGrad's loss is chosen by --trainer ProGrad",
    "LOSS.GM": "unused by ProGrad's trainers",
    "LOSS.ALPHA": "unused by ProGrad's trainers",
    "TRAINER.COOP.ALPHA": "unused by ProGrad's trainers",
}

# Upstream values that this project writes otherwise: ProGrad's boolean CTX_INIT ("use the dataset's
# template") is our CTX_INIT "template".
VALUES = {"TRAINER.COOP.CTX_INIT": {True: "template", False: ""}}

_said = set()


def translate(key, value):
    """(our key, our value) for an upstream ``key`` (ours pass through), or None to drop it."""
    if key in IGNORED:
        if key not in _said:
            print(f"Note: upstream config key {key} has no effect here ({IGNORED[key]})")
            _said.add(key)
        return None
    key = ALIASES.get(key, key)
    mapping = VALUES.get(key)
    if mapping is not None and isinstance(value, bool):
        value = mapping[value]
    return key, value


def translate_mapping(content, source="a config file"):
    """A config file's nested mapping with upstream keys translated; ``source`` (the file) names it in
    the one line that refuses a key given both as a value and as a section (``LOSS.T: 1`` beside
    ``TRAINER.PROGRAD.T: {...}``)."""
    out = {}
    for key, value in dotted_items(content):
        translated = translate(key, value)
        if translated is not None:
            _put(out, *translated, source)
    return out


def _put(tree, dotted_key, value, source):
    node = tree
    *parents, last = dotted_key.split(".")
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{source}: key {'.'.join(parents[:depth + 1])} is given both as a value and as a "
                            f"section (holding {dotted_key})")
    if isinstance(node.get(last), dict):
        raise UserError(f"{source}: key {dotted_key} is given both as a section and as a value")
    node[last] = value


def translate_opts(opts):
    """A command line's trailing KEY VALUE list with upstream keys translated (values are strings:
    ProGrad's CTX_INIT True / False are written as strings too)."""
    out = []
    for key, value in zip(opts[::2], opts[1::2]):
        literal = {"True": True, "False": False}.get(value, value) if key in VALUES else value
        translated = translate(key, literal)
        if translated is not None:
            out += [translated[0], translated[1] if isinstance(translated[1], str) else str(translated[1])]
    return out

# KgCoOp (htyao89/KgCoOp) keeps its lambda in CoOp's node; its boolean CTX_INIT means "a photo of a",
# which KgCoOp's CTX_INIT "template" is (trainers/kgcoop.py), so the mapping above serves it too.
ALIASES["TRAINER.COOP.W"] = "TRAINER.KGCOOP.W"

# MaPLe and PromptSRC (muzairkhattak/multimodal-prompt-learning, muzairkhattak/PromptSRC) keep their
# precision in their own nodes; their other keys have the same names here (trainers/maple.py, promptsrc.py).
ALIASES["TRAINER.MAPLE.PREC"] = "TRAINER.PREC"
ALIASES["TRAINER.PROMPTSRC.PREC"] = "TRAINER.PREC"
