"""The one error type users see: bad input, reported as a single readable line.

Every room raises :class:`InputError` for invalid user input (a job-spec field out of range, a
malformed configuration, an index set with duplicates, ...). The CLI turns it into one line on
stderr and a non-zero exit, before anything is written.
"""


class InputError(ValueError):
    """Invalid user input. ``str(err)`` is one line that names the field and the allowed range."""
