"""The error types users see, each reported as a single readable line with its own exit code.

* :class:`InputError` (exit 2): invalid user input -- a job-spec field out of range, a malformed
  configuration, a file that is not what it should be. Raised before anything is written.
* :class:`DataError` (exit 2, an InputError): stored data that fails its checks -- a shard whose
  checksum no longer matches its completion record, an array of the wrong shape. The input is the
  store; the line names the shard and array, and ``hpcsur store verify`` lists every problem.
* :class:`EnvironmentProblem` (exit 3): the machine, not the input -- an I/O failure (disk full,
  read-only or vanished folder), MPI or the batch system failing. Operating-system errors that
  reach the command line are reported the same way.
"""

EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3


class InputError(ValueError):
    """Invalid user input. ``str(err)`` is one line that names the field and the allowed range."""


class DataError(InputError):
    """Stored data failed verification (checksum, shape); ``str(err)`` names the store, shard and array."""


class EnvironmentProblem(RuntimeError):
    """The environment failed (I/O, MPI, scheduler); ``str(err)`` is one line saying what and where."""
