"""Built-in explanation methods; importing this package registers them."""

from . import lrp  # noqa: F401
