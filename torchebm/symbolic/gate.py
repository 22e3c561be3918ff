"""The trust boundary: every value from outside that is printed into generated source.

Generated modules are executed (``load.py``) and imported (the built-ins, the
CLI's ``show -o``), so a value pasted into their text unchecked is code run
on the user's machine. Everything that comes from a user, a definition file,
a file name or the command line reaches the emitter only through the
functions of this module:

* :func:`identifier`: ASCII Python identifiers, not keywords, not reserved;
* :func:`string`: a one-line string literal (``repr``, never pasted);
* :func:`comment`: text for a ``#`` comment, escaped to one line;
* :func:`integer` and :func:`number`: ``int``-checked integers and floats
  printed to round-trip (``float('inf')`` and ``float('nan')`` spelled so
  that they import), numbers outside float64 refused;
* :func:`literal`: nested tuples of numbers;
* :func:`docstring`: a triple-quoted literal whose value is the text,
  whatever characters it holds.

Each raises :class:`EnergySyntaxError` naming the value, where it came from
(``what``) and how to fix it. ``tests/test_gate.py`` checks that the emitter
has no other way to put an outside value into the text.
"""

from __future__ import annotations

import keyword
import re

from ..core.base import python_literal
from ..errors import EnergySyntaxError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLAIN_COMMENT = re.compile(r"[\x20-\x7e]*\Z")   # printable ASCII: no line break, no NUL
MAX_IDENTIFIER = 200


def identifier(name, what: str = "name", reserved=frozenset()) -> str:
    """``name`` if it is an ASCII identifier, no keyword and not in ``reserved``.

    Raises:
        EnergySyntaxError: anything else, naming ``what`` and the rule broken.
    """
    if not isinstance(name, str):
        raise EnergySyntaxError(f"{what} must be a string, not {type(name).__name__}")
    if len(name) > MAX_IDENTIFIER or not _IDENTIFIER.match(name):
        raise EnergySyntaxError(
            f"{what} {name[:60]!r} is not a Python identifier: use ASCII letters, digits and "
            f"'_', not starting with a digit (e.g. 'MyEnergy'), at most {MAX_IDENTIFIER} "
            f"characters")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise EnergySyntaxError(f"{what} {name!r} is a Python keyword; choose another name")
    if name in reserved:
        raise EnergySyntaxError(f"{what} {name!r} is reserved by the generated code; "
                                f"choose another name")
    return name


def string(text, what: str = "text") -> str:
    """A one-line Python string literal whose value is ``text``."""
    if not isinstance(text, str):
        raise EnergySyntaxError(f"{what} must be a string, not {type(text).__name__}")
    return repr(text)


def comment(text, what: str = "text") -> str:
    """``text`` for a comment line: as written when it is printable ASCII (nothing in it
    can end the comment), else as a literal (line breaks, NUL, non-ASCII escaped)."""
    if not isinstance(text, str):
        raise EnergySyntaxError(f"{what} must be a string, not {type(text).__name__}")
    return text if _PLAIN_COMMENT.match(text) else ascii(text)


def integer(value, what: str = "integer") -> str:
    """The decimal text of an ``int`` (bool and float refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnergySyntaxError(f"{what} must be an integer, not {value!r:.60}")
    if value.bit_length() > 63:
        raise EnergySyntaxError(f"{what} = {value!r:.60} is out of range (|value| < 2**63)")
    return str(int(value))


def number(value, what: str = "number") -> str:
    """A float literal that round-trips ``value`` in float64.

    ``inf``, ``-inf`` and ``nan`` print as ``float('inf')`` etc. so that the
    module imports; an integer too large for float64 is refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EnergySyntaxError(f"{what} must be a number, not {type(value).__name__} "
                                f"{value!r:.60}")
    try:
        v = float(value)
    except OverflowError:
        raise EnergySyntaxError(f"{what} is an integer of {len(str(abs(value)))} digits, "
                                f"outside the float64 range (about 1.8e308)") from None
    return python_literal(v)


def literal(value, what: str = "value") -> str:
    """A number, or nested tuples of numbers, as a Python literal (None stays None)."""
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        items = [literal(v, what) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return number(value, what)


def docstring(text: str, indent: str = "") -> str:
    """A triple-quoted docstring literal whose value is exactly ``text``.

    Backslashes and quotes are escaped; characters that may not appear raw
    in source (NUL, lone surrogates, other controls except newline and tab)
    are escaped as ``\\x..``/``\\u....``. The result spans lines only at the
    newlines of ``text``.
    """
    if not isinstance(text, str):
        raise EnergySyntaxError(f"a docstring must be a string, not {type(text).__name__}")
    out = []
    prev = ""
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == '"' and prev == '"':      # no run of three quotes can close the literal
            out.append('\\"')
        elif c in "\n\t":
            out.append(c)
        elif c.isprintable() and c != "\x7f":
            out.append(c)
        else:
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000
                       else f"\\U{o:08x}")
        prev = c
    body = "".join(out).replace("\n", "\n" + indent)
    return '"""' + body + "\n" + indent + '"""'


def string_dict(mapping, what: str = "mapping") -> str:
    """A dict literal of string keys and string (or tuple-of-string) values."""
    items = []
    for k, v in mapping.items():
        value = ("(" + ", ".join(string(e, what) for e in v) + ("," if len(v) == 1 else "") + ")"
                 if isinstance(v, tuple) else string(v, what))
        items.append(f"{string(k, what)}: {value}")
    return "{" + ", ".join(items) + "}"
