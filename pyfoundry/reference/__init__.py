"""NumPy reference implementations: the executable specification of every stage and format."""
from . import quants  # noqa: F401
