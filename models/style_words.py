"""Style words in a text query: "a watercolour of a harbour", "a pencil sketch of a horse", "an impressionist garden".

`read_style(text)` finds the words that say how an image is made (a medium, a style, an art movement, with their
synonyms) and returns the style they name and the text without them (what the image shows). A search ranks by
the content text and by how well each gallery image matches the style (`StyleProbe`, models/style_probe.py).

Every term maps to one label the probe knows: a coarse style of `models.style.STYLES` (sketch, painting, cartoon,
doodle, lowres), or an art movement with training examples (`MOVEMENTS`, WikiArt's seven). Terms
without examples of their own are read as their nearest known label, and say so (`StyleRead.approximate`):
cubism and ukiyo-e as paintings, pop art as a cartoon, pointillism as post-impressionism, rococo as baroque.

"Photo" words are not style words: a photo is what a search finds when no style is named, and "a photo of a X"
is how people (and the ImageNet prompts) name a thing. Read as a style, it demoted the few gallery photos that
look drawn or painted: imagenet-classes lost 0.02 mAP (docs/style_text.md), so it is searched as plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .style import STYLES

# art movements the probe knows (WikiArt's `art_style` values, by label)
MOVEMENTS = {
    "art nouveau": "Art Nouveau Modern",
    "baroque": "Baroque",
    "expressionism": "Expressionism",
    "impressionism": "Impressionism",
    "post-impressionism": "Post-Impressionism",
    "romanticism": "Romanticism",
    "symbolism": "Symbolism",
}
LABELS = (*STYLES, *MOVEMENTS)

# label -> terms (lower case; a term may be several words, matched whole, with an optional plural "s")
_TERMS: dict[str, tuple[str, ...]] = {
    # no bare "pencil", "charcoal", "oil", "canvas", "mosaic": a pencil, a charcoal grill, olive oil are things
    "sketch": ("sketch", "sketched", "pencil sketch", "pencil drawing", "in pencil", "charcoal drawing",
               "charcoal sketch", "in charcoal", "line drawing", "line art", "ink drawing", "pen drawing", "drawing",
               "hand-drawn", "graphite drawing"),
    "painting": ("painting", "oil painting", "oil on canvas", "in oils", "watercolour", "watercolor",
                 "acrylic painting", "gouache", "tempera", "fresco"),
    "cartoon": ("cartoon", "cartoonish", "comic", "comic strip", "clipart", "clip art", "clip-art", "anime",
                "manga", "vector art", "illustration"),
    "doodle": ("doodle", "doodled", "scribble", "scribbled", "quick drawing", "stick figure"),
    "lowres": ("pixel art", "pixelated", "pixelized", "8-bit", "low resolution", "low-resolution", "low res",
               "low-res", "lowres"),
    "art nouveau": ("art nouveau", "jugendstil", "modern style", "secession style"),
    "baroque": ("baroque",),
    "expressionism": ("expressionism", "expressionist", "abstract expressionism", "expressionistic"),
    "impressionism": ("impressionism", "impressionist", "impressionistic", "impressionist painting"),
    "post-impressionism": ("post-impressionism", "post-impressionist", "post impressionism", "post impressionist",
                           "postimpressionism", "postimpressionist"),
    "romanticism": ("romanticism", "romanticist", "romantic painting", "romantic era", "romantic period"),
    "symbolism": ("symbolism", "symbolist"),
}
# terms with no examples of their own, read as their nearest known label
_NEAREST: dict[str, tuple[str, tuple[str, ...]]] = {
    "cubism": ("painting", ("cubism", "cubist")),
    "ukiyo-e": ("painting", ("ukiyo-e", "ukiyoe", "ukiyo e", "japanese woodblock print", "woodblock print")),
    "renaissance": ("painting", ("renaissance",)),
    "realism": ("painting", ("realism", "realist painting")),
    "surrealism": ("symbolism", ("surrealism", "surrealist")),
    "pop art": ("cartoon", ("pop art", "pop-art")),
    "pointillism": ("post-impressionism", ("pointillism", "pointillist")),
    "fauvism": ("expressionism", ("fauvism", "fauvist", "fauve")),
    "rococo": ("baroque", ("rococo",)),
}

_LOOKUP: dict[str, tuple[str, str]] = {}  # term -> (label, the name it is shown by)
for _label, _terms in _TERMS.items():
    for _t in _terms:
        _LOOKUP[_t] = (_label, _label)
for _name, (_label, _terms) in _NEAREST.items():
    for _t in _terms:
        _LOOKUP[_t] = (_label, _name)
assert all(label in LABELS for label, _ in _LOOKUP.values())


def _term_pattern(term: str) -> str:
    return r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", term))


# longest terms first, so "post-impressionist" wins over "impressionist" and "pencil sketch" over "pencil"
_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(_term_pattern(t) for t in sorted(_LOOKUP, key=len, reverse=True))
                      + r")(?:e?s)?(?![\w-])", re.IGNORECASE)
_SPACE = re.compile(r"[\s-]+")
# what is left around removed style words: "a  of a horse", "a horse in the style of", "an  garden"
_CLEANUPS = (
    (re.compile(r"\b(?:in|with)\s+(?:the\s+|an?\s+)?(?:style|manner)\s+of\s*$", re.I), ""),
    (re.compile(r"\b(?:in|with)\s+(?:the\s+|an?\s+)?(?:style|manner|technique)\s*$", re.I), ""),
    (re.compile(r"^\s*(?:(?:an?|the)\s+)?(?:style|kind|sort|type)?\s*(?:of|in|with|on)\s+", re.I), ""),
    (re.compile(r"\b(?:an?|the)\s+(?:of|in|on|with)\s+", re.I), ""),
    (re.compile(r"\b(?:in|with|on|by|of|an?|the|style|art)\s*$", re.I), ""),
    (re.compile(r"^\s*(?:style|art|work)\b\s*(?:of\s+)?", re.I), ""),
)


@dataclass(frozen=True)
class StyleRead:
    """The style a text names and the rest of it."""

    label: str                # one of LABELS: what the gallery images are matched against
    name: str                 # what the text called it, normalised ("watercolour" -> "painting"; "cubism")
    words: tuple[str, ...]    # the style words as typed
    content: str              # the text without them ("" when the text only names a style)

    @property
    def approximate(self) -> bool:
        """True when the named style has no examples of its own and is read as its nearest label."""
        return self.name != self.label

    def describe(self) -> str:
        """"sketch", "impressionism", "cubism (read as painting)"."""
        return f"{self.name} (read as {self.label})" if self.approximate else self.label


def _normalise(term: str) -> str:
    t = _SPACE.sub(" ", term.lower()).strip()
    for candidate in (t, t[:-1], t[:-2]):  # the optional plural
        for key in (candidate, candidate.replace(" ", "-")):
            if key in _LOOKUP:
                return key
    return t


def read_style(text: str | None) -> StyleRead | None:
    """The style named in `text`, or None when it names none (the text is then searched as it is).

    With several style words, a movement wins over a medium ("an impressionist oil painting" is
    impressionism), else the first one ("a sketch of a painting" is a sketch)."""
    if not text:
        return None
    found = list(_PATTERN.finditer(text))
    if not found:
        return None
    reads = [_LOOKUP[_normalise(m.group(1))] for m in found]
    movements = [r for r in reads if r[0] in MOVEMENTS]
    label, name = (movements or reads)[0]
    content = strip_style_words(text)
    return StyleRead(label, name, tuple(m.group(0) for m in found), content)


def strip_style_words(text: str) -> str:
    """`text` without its style words and the words that only joined them to it."""
    out = _PATTERN.sub(" ", text)
    out = re.sub(r"\s+", " ", out).strip(" ,;:.-")
    for _ in range(3):
        before = out
        for pattern, repl in _CLEANUPS:
            out = pattern.sub(repl, out).strip(" ,;:.-")
            out = re.sub(r"\s+", " ", out)
        if out == before:
            break
    # "an garden" -> "a garden" (the removed word began with a vowel)
    out = re.sub(r"\b(an?)\s+(\w)", lambda m: ("an " if m.group(2).lower() in "aeiou" else "a ") + m.group(2),
                 out, flags=re.I)
    return out.strip()
