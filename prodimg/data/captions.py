"""Caption generation for the fashion catalog: many templates, synonyms and optional words.

Every caption names the category, the colour and (except often for solid items) the pattern.
Each category has several names (``CATEGORY_SYNONYMS``) and every template draws the name from
that list, so no template is the only way a category is named. Attribute order varies between
templates ("red striped tee", "striped red tee", "tee in red, striped", ...), and optional words
("product photo of", "on white background", ...) come and go.
"""

from __future__ import annotations

# Category ids follow Fashion-MNIST's label order; these are the ClassLabel names.
CATEGORY_NAMES: list[str] = [
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

# (name, plural) — plural names take "a pair of" or no article.
CATEGORY_SYNONYMS: dict[str, list[tuple[str, bool]]] = {
    "t-shirt": [("t-shirt", False), ("tee", False), ("tee shirt", False), ("short-sleeve top", False)],
    "trousers": [("trousers", True), ("pants", True), ("slacks", True), ("chinos", True)],
    "pullover": [("pullover", False), ("sweater", False), ("jumper", False), ("knit sweater", False)],
    "dress": [("dress", False), ("frock", False), ("day dress", False), ("shift dress", False)],
    "coat": [("coat", False), ("jacket", False), ("overcoat", False), ("outerwear jacket", False)],
    "sandal": [("sandal", False), ("sandals", True), ("strappy sandal", False), ("summer sandals", True)],
    "shirt": [("shirt", False), ("button-down shirt", False), ("blouse", False), ("button-up shirt", False)],
    "sneaker": [("sneaker", False), ("sneakers", True), ("trainer", False), ("running shoe", False)],
    "bag": [("bag", False), ("handbag", False), ("tote bag", False), ("purse", False)],
    "ankle boot": [("ankle boot", False), ("ankle boots", True), ("bootie", False), ("short boot", False)],
}

COLOR_SYNONYMS: dict[str, list[str]] = {"gray": ["gray", "grey"]}

# Adjectives used before the noun; "" means the pattern is left unsaid (solid items only).
PATTERN_ADJECTIVES: dict[str, list[str]] = {
    "solid": ["", "", "solid", "plain", "solid-color"],
    "striped": ["striped", "stripy", "stripe-pattern"],
    "checked": ["checked", "plaid", "gingham", "check-pattern"],
    "dotted": ["polka-dot", "dotted", "spotted"],
}
# "... with <noun>" phrases; "" means no phrase.
PATTERN_PHRASES: dict[str, list[str]] = {
    "solid": ["", "", "no pattern", "a solid color"],
    "striped": ["stripes", "a striped pattern", "stripe print"],
    "checked": ["a check pattern", "checks", "a plaid pattern"],
    "dotted": ["polka dots", "dots", "a dot print"],
}
PATTERN_WORDS: dict[str, list[str]] = {
    "solid": ["solid", "plain", "none"],
    "striped": ["striped", "stripes"],
    "checked": ["checked", "plaid", "check"],
    "dotted": ["dotted", "polka dots"],
}

# Noun-phrase orderings. Slots: {color}, {adj}, {cat}, {phrase}, {pword}.
NOUN_PHRASES: list[str] = [
    "{color} {adj} {cat}",
    "{adj} {color} {cat}",
    "{color} {cat} with {phrase}",
    "{adj} {cat} in {color}",
    "{cat} in {color}, {adj}",
    "{color} {cat}, {adj}",
]
# Wrappers. {np} takes an article ("a red tee", "a pair of red pants"); {bare} does not.
WRAPPERS: list[str] = [
    "{bare}",
    "{np}",
    "product photo of {np}",
    "studio photo of {np}",
    "photo of {np}",
    "catalog image of {np}",
    "{bare}, product photo",
    "{bare} on white background",
    "{np} on a white background",
    "{bare}, isolated on white",
    "e-commerce photo: {bare}",
    "{np}, studio lighting, white backdrop",
]
# Catalogue-style attribute listings (no wrapper).
LISTINGS: list[str] = [
    "{cat}, color: {color}, pattern: {pword}",
    "{cat} | {color} | {pword}",
]

N_CAPTION_UNIFORMS = 6
"""How many uniforms in [0, 1) ``make_caption`` consumes."""


def _pick(options: list, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


def _article(phrase: str, plural: bool) -> str:
    if plural:
        return f"a pair of {phrase}"
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    return text.replace(" ,", ",").replace(", ,", ",").strip(" ,")


def make_caption(category: str, color: str, pattern: str, u) -> str:
    """Caption for one item from uniforms ``u`` (length >= ``N_CAPTION_UNIFORMS``), deterministic."""
    if category not in CATEGORY_SYNONYMS:
        raise ValueError(f"category must be one of {CATEGORY_NAMES}, got {category!r}")
    if pattern not in PATTERN_ADJECTIVES:
        raise ValueError(f"pattern must be one of {list(PATTERN_ADJECTIVES)}, got {pattern!r}")
    u = [float(x) for x in u]
    if len(u) < N_CAPTION_UNIFORMS:
        raise ValueError(f"make_caption needs {N_CAPTION_UNIFORMS} uniforms, got {len(u)}")
    cat, plural = _pick(CATEGORY_SYNONYMS[category], u[0])
    color_word = _pick(COLOR_SYNONYMS.get(color, [color]), u[1])
    adj = _pick(PATTERN_ADJECTIVES[pattern], u[2])
    phrase = _pick(PATTERN_PHRASES[pattern], u[2])
    pword = _pick(PATTERN_WORDS[pattern], u[2])
    if u[3] < 0.15:
        return _tidy(_pick(LISTINGS, u[4]).format(cat=cat, color=color_word, pword=pword))
    template = _pick(NOUN_PHRASES, u[4])
    if "{phrase}" in template and not phrase:
        template = "{color} {cat}"
    elif "{adj}" in template and not adj:
        template = template.replace(", {adj}", "").replace("{adj} ", "")
    noun_phrase = _tidy(template.format(color=color_word, adj=adj, cat=cat, phrase=phrase))
    wrapper = _pick(WRAPPERS, u[5])
    return _tidy(wrapper.format(np=_article(noun_phrase, plural), bare=noun_phrase))


__all__ = [
    "CATEGORY_NAMES",
    "CATEGORY_SYNONYMS",
    "COLOR_SYNONYMS",
    "LISTINGS",
    "NOUN_PHRASES",
    "N_CAPTION_UNIFORMS",
    "PATTERN_ADJECTIVES",
    "WRAPPERS",
    "make_caption",
]
