"""Forget/retain split: which pairs name a concept to unlearn.

A pair is **forget** for concept ``c`` when its label (class name) or its caption *names* ``c``:

* **case-insensitive, whole words**: "Dog" and "dog's" name ``dog``; "hotdog" and "dogma" do not.
  Letters and digits make words; anything else (space, punctuation, ``-``, ``_``) separates
  them, so "hot-dog" and "golden_retriever" name ``dog`` and ``retriever``.
* **multi-word concepts** match their words in order, separated by any run of spaces, ``-`` or
  ``_``: ``"teddy bear"`` matches "Teddy  Bear", "teddy-bear", but not "teddybear" or
  "teddy and a bear".
* **plurals** (``plurals=True``): the *last* word of a concept also matches its regular English
  plurals (``+s``, ``+es``, ``y -> ies``, ``f/fe -> ves``) and a small table of irregular ones
  (man/men, person/people, child/children, mouse/mice, foot/feet, tooth/teeth, goose/geese,
  ox/oxen, leaf/leaves, ...). Give concepts in the singular: "dogs" is not reduced to "dog".
  For anything else pass aliases: ``{"dog": ["puppy", "canine"]}``.

A pair naming several concepts is in each of their lists; ``retain`` holds every pair that
names none. A concept that names no pair, an empty forget set or an empty retain set is an
error that names the concept (never a silent empty run).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = ["ForgetRetainSplit", "ConceptError", "split_forget_retain", "concept_pattern", "names_concept",
           "plural_forms", "IRREGULAR_PLURALS"]


class ConceptError(ValueError):
    """A concept list that cannot give a forget/retain split (the message names the concept)."""


#: Irregular singular -> plural forms recognised for a concept's last word.
IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "person": "people", "child": "children", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "ox": "oxen", "louse": "lice",
    "die": "dice", "cactus": "cacti", "fish": "fish", "sheep": "sheep", "deer": "deer",
}

_VOWELS = "aeiou"


def plural_forms(word: str) -> list[str]:
    """``word`` and its plural forms (see the module docstring), lower-case."""
    w = word.lower()
    forms = {w, w + "s", w + "es"}
    if len(w) > 1 and w.endswith("y") and w[-2] not in _VOWELS:
        forms.add(w[:-1] + "ies")
    if w.endswith("fe"):
        forms.add(w[:-2] + "ves")
    elif w.endswith("f"):
        forms.add(w[:-1] + "ves")
    if w in IRREGULAR_PLURALS:
        forms.add(IRREGULAR_PLURALS[w])
    return sorted(forms, key=len, reverse=True)


_SEP = r"[\s\-_]+"
_BEFORE = r"(?<![^\W_])"  # not preceded by a letter or digit
_AFTER = r"(?![^\W_])"    # not followed by a letter or digit


def _words(phrase: str) -> list[str]:
    return re.sub(r"[\-_]", " ", phrase.lower()).split()


def concept_pattern(phrases: str | Sequence[str], plurals: bool = True) -> re.Pattern:
    """The compiled regex that finds ``phrases`` (a concept and its aliases) in a text."""
    if isinstance(phrases, str):
        phrases = [phrases]
    alternatives = []
    for phrase in phrases:
        words = _words(phrase)
        if not words:
            raise ConceptError(f"empty concept or alias {phrase!r}")
        parts = [re.escape(w) for w in words[:-1]]
        last = plural_forms(words[-1]) if plurals else [words[-1]]
        parts.append("(?:" + "|".join(re.escape(f) for f in last) + ")")
        alternatives.append(_SEP.join(parts))
    return re.compile(_BEFORE + "(?:" + "|".join(alternatives) + ")" + _AFTER, re.IGNORECASE)


def names_concept(text: str, concept: str | Sequence[str], plurals: bool = True) -> bool:
    """Whether ``text`` names ``concept`` (a phrase or a list of alias phrases)."""
    return bool(concept_pattern(concept, plurals).search(text or ""))


@dataclass
class ForgetRetainSplit:
    """``forget[c]``: sorted indices of the pairs naming concept ``c`` (keys in the order the
    concepts were given); ``retain``: sorted indices naming no concept."""

    forget: dict[str, list[int]]
    retain: list[int]
    concepts: list[str] = field(default_factory=list)

    @property
    def forget_indices(self) -> list[int]:
        """Every forget index once, sorted."""
        return sorted({i for idx in self.forget.values() for i in idx})

    def summary(self) -> str:
        per = ", ".join(f"{c!r}: {len(v)}" for c, v in self.forget.items())
        return f"forget {len(self.forget_indices)} pairs ({per}); retain {len(self.retain)} pairs"


def _texts(data) -> tuple[list[str], list[str]]:
    """(captions, label names) of a dataset, a sequence of captions, or a sequence of items."""
    if isinstance(data, str):
        raise TypeError("dataset_or_captions must be a dataset or a sequence of captions, not a single string")
    captions = getattr(data, "captions", None)
    if captions is not None:
        captions = list(captions)
        labels = getattr(data, "labels", None)
        labels = [""] * len(captions) if labels is None else list(labels.tolist() if hasattr(labels, "tolist") else labels)
    else:
        items = [data[i] for i in range(len(data))]
        if all(isinstance(it, str) for it in items):
            return items, [""] * len(items)
        if not all(isinstance(it, Mapping) and "caption" in it for it in items):
            raise TypeError("dataset_or_captions must have .captions, or hold strings or "
                            "{'caption': ..., 'label': ...} items")
        captions = [it["caption"] for it in items]
        labels = [it.get("label", "") for it in items]
    classnames = getattr(data, "classnames", None)
    names = []
    for lab in labels:
        if lab is None:
            names.append("")
        elif isinstance(lab, str):
            names.append(lab)
        elif classnames is not None and 0 <= int(lab) < len(classnames):  # integer class ids
            names.append(str(classnames[int(lab)]))
        else:
            names.append("")
    if len(names) != len(captions):
        raise ValueError(f"the data has {len(captions)} captions but {len(names)} labels")
    return [c if isinstance(c, str) else "" for c in captions], names


def _concept_aliases(concepts) -> dict[str, list[str]]:
    if concepts is None or isinstance(concepts, (bytes, int, float)):
        raise ConceptError(f"concepts must be a string, a list of strings or a dict concept -> aliases, got {concepts!r}")
    if isinstance(concepts, str):
        concepts = [concepts]
    if isinstance(concepts, Mapping):
        pairs = [(c, [c, *([a] if isinstance(a, str) else list(a))]) for c, a in concepts.items()]
    else:
        pairs = [(c, [c]) for c in concepts]
    out: dict[str, list[str]] = {}
    for concept, phrases in pairs:
        if not isinstance(concept, str) or not all(isinstance(p, str) for p in phrases):
            raise ConceptError(f"concepts and aliases must be strings, got {concept!r}: {phrases!r}")
        if not _words(concept):
            raise ConceptError(f"empty concept {concept!r}")
        out.setdefault(concept, phrases)
    if not out:
        raise ConceptError("no concepts given: pass at least one concept to forget")
    return out


def split_forget_retain(dataset_or_captions, concepts, *, plurals: bool = True, match_labels: bool = True,
                        match_captions: bool = True, allow_missing: bool = False,
                        allow_empty_retain: bool = False) -> ForgetRetainSplit:
    """Split pairs into forget (per concept) and retain (see the module docstring for the rule).

    ``dataset_or_captions``: a dataset with ``captions`` (and ``labels``: class names, or class
    ids with ``classnames``), a sequence of captions, or a sequence of item dicts.
    ``concepts``: a string, a list, or a dict ``concept -> aliases``.
    ``allow_missing``: a concept naming no pair gets an empty list instead of an error (at least
    one concept must still name a pair). ``allow_empty_retain``: allow every pair to be forget.
    """
    aliases = _concept_aliases(concepts)
    if not (match_labels or match_captions):
        raise ValueError("match_labels and match_captions cannot both be False")
    captions, labels = _texts(dataset_or_captions)
    if not captions:
        raise ConceptError("the data is empty: no pairs to split")
    forget: dict[str, list[int]] = {}
    for concept, phrases in aliases.items():
        pat = concept_pattern(phrases, plurals)
        forget[concept] = [i for i, (cap, lab) in enumerate(zip(captions, labels))
                           if (match_labels and lab and pat.search(lab))
                           or (match_captions and cap and pat.search(cap))]
    missing = [c for c, idx in forget.items() if not idx]
    if missing and (not allow_missing or len(missing) == len(forget)):
        known = sorted({lab for lab in labels if lab})
        hint = (f"; labels in the data: {', '.join(known[:30])}{' ...' if len(known) > 30 else ''}"
                if known else f"; e.g. captions: {'; '.join(repr(c) for c in captions[:3])}")
        raise ConceptError(f"concept(s) {', '.join(repr(c) for c in missing)} name no pair: no "
                           f"{'label or caption' if match_labels and match_captions else 'label' if match_labels else 'caption'}"
                           f" of the {len(captions)} pairs contains them{hint}")
    hit = {i for idx in forget.values() for i in idx}
    retain = [i for i in range(len(captions)) if i not in hit]
    if not retain and not allow_empty_retain:
        raise ConceptError(f"every one of the {len(captions)} pairs names a forget concept "
                           f"({', '.join(map(repr, forget))}): no retain pairs left")
    return ForgetRetainSplit(forget=forget, retain=retain, concepts=list(forget))
