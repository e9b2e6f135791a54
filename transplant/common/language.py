"""A small, dependency-free guess of a text's language, for the model card's `language` field.

Counts frequent function words of English, German, French, Spanish, Italian, Portuguese and
Dutch, and recognizes source code by its punctuation and keywords. It answers only when one
language clearly leads: a card with no `language` is better than a wrong one.

Example:
    >>> detect_language(["Der Hund schläft im Garten, und die Katze ist nicht da."])
    'de'
    >>> detect_language(["def add(a, b):\\n    return a + b\\n", "if (x == 1) { y = f(x); }\\n"])
    'code'
    >>> detect_language(["Lorem ipsum dolor sit amet"]) is None  # none of the known languages
    True
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Frequent words that are (mostly) one language's own; shared spellings (de, la, a, e, en) are
# left out so they cannot tip a close call.
_STOP_WORDS = {
    "en": "the and of to is that it was for with as on be are this have not by from at his they which you but "
          "or had were their",
    "de": "der die und das ist nicht ein eine zu den von mit sich des auf für im dem auch es ich sie wir wird "
          "werden wie aus bei nach oder noch",
    "fr": "le les et des est une dans pour pas sur au du qui ce il elle avec sont mais ou nous vous leur cette "
          "aux été",
    "es": "el los las y que del por con para una es lo como más pero sus al fue está también entre cuando muy "
          "sin sobre",
    "it": "il di che della per non sono con del gli nel alla anche più come ma questo una essere dei delle nella è",
    "pt": "o os do da em um uma para com não no na por dos das ao como mais mas foi também pelo pela são",
    "nl": "het een en van is dat op te niet zijn met voor er die zich ook aan naar bij maar om uit wordt",
    # Not a language: words that mark source code (with `_CODE_CHARS`).
    "code": "def return import class function const var let public private static void elif else self none null "
            "true false lambda yield raise except async await include struct fn impl println printf",
}
STOP_WORDS = {lang: frozenset(words.split()) for lang, words in _STOP_WORDS.items() if lang != "code"}
_CODE_WORDS = frozenset(_STOP_WORDS["code"].split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_CODE_CHARS = set("{}();=<>[]")

MIN_SHARE = 0.12  # the leader's function words per word (natural text: 0.25-0.5)
MIN_LEAD = 2.0    # ... and at least this many times the runner-up's
READ_CHARS = 200_000  # enough text for a stable count; no need to read a whole corpus


def detect_language(texts: Iterable[str]) -> str | None:
    """An ISO 639-1 code (`en`, `de`, `fr`, `es`, `it`, `pt`, `nl`), `"code"`, or None when unsure.

    Args:
        texts: the texts (not file names); only their first 200,000 characters in all are read.
    """
    sample, used = [], 0
    for text in texts:
        if used >= READ_CHARS:
            break
        sample.append(text[:READ_CHARS - used])
        used += len(sample[-1])
    text = "\n".join(sample)
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return None
    if _looks_like_code(text, words):
        return "code"
    counts = Counter(words)
    shares = sorted(((sum(counts[w] for w in stop) / len(words), lang) for lang, stop in STOP_WORDS.items()),
                    reverse=True)
    (best, lang), (second, _) = shares[0], shares[1]
    if best < MIN_SHARE or best < MIN_LEAD * second:
        return None
    return lang


def _looks_like_code(text: str, words: list[str]) -> bool:
    """Punctuation-dense text with programming keywords (prose has few `{}();=`)."""
    chars = sum(1 for c in text if c in _CODE_CHARS) / max(len(text), 1)
    keywords = sum(1 for w in words if w in _CODE_WORDS) / len(words)
    return chars > 0.025 and keywords > 0.015


__all__ = ["detect_language"]
