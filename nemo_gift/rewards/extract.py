"""Answer extraction and cheap normalization, in the calling process.

Everything here is plain string scanning: linear in the input, no regular
expression with nested or adjacent overlapping quantifiers (no catastrophic
backtracking), no integer conversion of unbounded digit strings, no sympy, and
no ``eval``. Equivalence of LaTeX answers is decided elsewhere
(`nemo_gift.rewards.equivalence`), in a worker process with a hard timeout.

Formats:
- GSM8K: ``#### 42`` (the last ``####``; the first number on its line).
- MATH: the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces, escaped braces
  ``\\{ \\}``), or ``\\boxed 5``.
- DAPO: the last ``Answer: ...`` line (case-insensitive, ``**Answer:**`` too).
- AIME: whichever of the last boxed answer and the last ``Answer:`` line comes later.
"""

from __future__ import annotations

import re

CLIP_CHARS = 200
"""`VerifyResult.extracted` is clipped to this many characters."""

_ANSWER_RE = re.compile(r"answer(?:\*\*)?[ \t]*:", re.IGNORECASE)
# One number: optional sign, digits with optional commas, optional decimals. Linear.
_NUMBER_RE = re.compile(r"(?<![0-9.])-?[0-9][0-9,]*(?:\.[0-9]+)?")
_DECIMAL_RE = re.compile(r"([+-]?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)(?:\.([0-9]*))?")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_SPACING_RE = re.compile(r"\\[!,;: ]|\\(?:displaystyle|textstyle)(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\{?\\circ\}?")
_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-"})


def clip(text: str | None, limit: int = CLIP_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters (with a marker), for results and logs."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "...[clipped]"


def tail(text: str, max_chars: int) -> str:
    """The last ``max_chars`` characters: answers sit at the end of a response."""
    return text if len(text) <= max_chars else text[-max_chars:]


def _braced_group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group whose ``{`` is at ``text[start]``, and the index after ``}``.

    Backslash escapes (``\\{``, ``\\}``, ``\\\\``) do not count. None if unbalanced.
    """
    depth = 0
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _last_boxed_start(text: str) -> int:
    return max(text.rfind("\\boxed"), text.rfind("\\fbox"))


def find_last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x``, or None.

    A last box that never closes (a truncated response) gives None: an earlier box
    is usually an intermediate result, not the answer.
    """
    pos = _last_boxed_start(text)
    if pos < 0:
        return None
    j = pos + (6 if text.startswith("\\boxed", pos) else 5)
    k, n = j, len(text)
    while k < n and text[k] == " ":
        k += 1
    if k < n and text[k] == "{":
        group = _braced_group(text, k)
        return None if group is None else group[0]
    if k > j:  # "\boxed 5": up to the next space or math delimiter
        end = k
        while end < n and text[end] not in " \t\n$":
            end += 1
        return text[k:end] or None
    return None


def group_depth(text: str) -> int:
    """The deepest nesting of unescaped ``() [] {}`` in ``text`` (unbalanced closers are ignored)."""
    depth = best = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}" and depth > 0:
            depth -= 1
        i += 1
    return best


def _unwrap_once(s: str) -> str:
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)]
    for command in ("\\boxed", "\\fbox", "\\text", "\\textbf", "\\mathrm", "\\mbox"):
        if s.startswith(command + "{"):
            group = _braced_group(s, len(command))
            if group is not None and group[1] == len(s):
                return group[0]
    return s


def strip_wrappers(answer: str) -> str:
    """Strip whitespace, a trailing period, ``$...$``, ``\\(...\\)``, ``\\[...\\]``, and a
    ``\\boxed{}`` / ``\\text{}`` that wraps the whole answer (up to 8 layers)."""
    s = answer.strip()
    for _ in range(8):
        new = _unwrap_once(s.rstrip(" .").strip())
        if new == s:
            break
        s = new.strip()
    return s


def canonical_decimal(text: str) -> str | None:
    """The canonical form of a plain decimal number, or None if ``text`` is not one.

    ``"-0,012.500"`` is not a decimal (bad thousands grouping); ``"1,234.50"`` gives
    ``"1234.5"``; ``"007"`` gives ``"7"``; ``"-0.0"`` gives ``"0"``. Equal canonical
    strings mean equal numbers. Works on strings only, so digit count is unbounded.
    """
    s = text.strip().translate(_UNICODE_MINUS)
    m = _DECIMAL_RE.fullmatch(s)
    if m is None:
        return None
    sign, int_part, frac = m.group(1), m.group(2), m.group(3)
    if not int_part and not frac:
        return None
    int_part = int_part.replace(",", "").lstrip("0") or "0"
    frac = (frac or "").rstrip("0")
    body = int_part + ("." + frac if frac else "")
    if body == "0":
        return "0"
    return ("-" if sign == "-" else "") + body


def canonical_integer(text: str, lo: int | None = None, hi: int | None = None) -> str | None:
    """The canonical form of an integer (``"033"`` and ``"33.0"`` give ``"33"``), optionally in [lo, hi]."""
    c = canonical_decimal(text)
    if c is None or "." in c:
        return None
    if lo is not None or hi is not None:
        if len(c) > 20:  # outside any range we use; never convert long digit strings
            return None
        value = int(c)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return None
    return c


def gsm8k_extract(text: str) -> str | None:
    """The number after the last ``####`` (on the same line, or the next non-empty one), raw, or None."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    rest = text[pos + 4 :].lstrip()
    line = rest.split("\n", 1)[0].replace("$", "").translate(_UNICODE_MINUS)
    m = _NUMBER_RE.search(line)
    return None if m is None else m.group(0)


def gsm8k_canonical(number: str) -> str | None:
    """A GSM8K number (``"1,000"``, ``"-3.50"``) in canonical decimal form, or None."""
    return canonical_decimal(number.replace(",", ""))


def _last_answer_line(text: str) -> tuple[int, str] | None:
    last = None
    for last in _ANSWER_RE.finditer(text):
        pass
    if last is None:
        return None
    line = text[last.end() :].split("\n", 1)[0].strip().strip("*").strip()
    return (last.start(), line) if line else None


def answer_line_extract(text: str) -> str | None:
    """The content of the last ``Answer: ...`` line with its wrappers stripped, or None."""
    found = _last_answer_line(text)
    if found is None:
        return None
    return strip_wrappers(found[1]) or None


def boxed_or_answer_line_extract(text: str) -> str | None:
    """Whichever of the last boxed answer and the last ``Answer:`` line comes later in ``text``."""
    line = _last_answer_line(text)
    boxed_pos = _last_boxed_start(text)
    if line is not None and line[0] > boxed_pos:
        return strip_wrappers(line[1]) or None
    if boxed_pos >= 0:
        boxed = find_last_boxed(text)
        if boxed is not None:
            return strip_wrappers(boxed) or None
    return None if line is None else (strip_wrappers(line[1]) or None)


def light_latex_normalize(answer: str) -> str:
    """A cheap, conservative normal form for exact-match shortcuts (never for "not equal" decisions).

    Drops whitespace, ``\\left``/``\\right``, thin spaces, ``\\displaystyle``, degree
    marks, outer wrappers; maps ``\\dfrac``/``\\tfrac`` to ``\\frac``.
    """
    s = strip_wrappers(answer)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _SPACING_RE.sub("", s)
    s = _DEGREE_RE.sub("", s)
    return "".join(s.split())
