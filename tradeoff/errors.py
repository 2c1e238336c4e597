"""Exceptions the CLI turns into one line on stderr and a chosen exit code.

Library code raises ValueError / TypeError / FileNotFoundError for bad input, as
scikit-learn does; the two classes here exist only where the exit code must differ.
"""

import numbers


class TargetUnreachable(ValueError):
    """The requested accuracy or budget cannot be met; the CLI exits with code 3."""

    exit_code = 3


class UnsafeCheckpointError(ValueError):
    """Loading would unpickle arbitrary objects and the user did not opt in."""


def is_integer(value) -> bool:
    """Whether `value` is a Python or NumPy integer; bools are not (they are ints in Python).

    The one integer test behind every "must be an integer" message.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), cut to `limit` characters.

    Torch and NumPy errors run to many lines; a user-facing message quotes only this.
    """
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
