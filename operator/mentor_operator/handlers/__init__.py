"""kopf handlers: the Mentor kinds (kinds.py), the watches on the objects they create
(children.py) and operator start-up (startup.py). Importing the package registers them."""

from . import children, kinds, startup

__all__ = ["children", "kinds", "startup"]
