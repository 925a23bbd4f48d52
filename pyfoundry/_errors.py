"""Exception classes of pyfoundry.

Every error raised by the C core becomes one of these.  Each is a subclass of
:class:`FoundryError` and of the matching builtin, so ``except ValueError`` keeps working.
"""


class FoundryError(Exception):
    """Base class of every pyfoundry error."""


class GGUFError(FoundryError, ValueError):
    """A malformed or unsupported GGUF file.

    ``str(err)`` names the problem and the byte offset; ``err.offset`` holds the offset
    (or -1 when the problem is not tied to one place in the file).
    """

    def __init__(self, message, offset=-1):
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self):
        return self.message


class ShapeError(FoundryError, ValueError):
    """Wrong shape, dtype, size or other bad argument."""


class FoundryMemoryError(FoundryError, MemoryError):
    """An allocation failed."""


class FoundryIOError(FoundryError, OSError):
    """The operating system refused a file operation."""


class FoundryNotImplementedError(FoundryError, NotImplementedError):
    """A valid request that this build or format does not support."""


class FoundryIndexError(FoundryError, IndexError):
    """An index or key out of range."""


class FoundryStateError(FoundryError, RuntimeError):
    """An object used in the wrong state (for example a closed file)."""


__all__ = ["FoundryError", "GGUFError", "ShapeError", "FoundryMemoryError", "FoundryIOError",
           "FoundryNotImplementedError", "FoundryIndexError", "FoundryStateError"]
