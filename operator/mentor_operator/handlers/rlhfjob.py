"""kopf handlers of RLHFJob."""

from ..api import KINDS
from .common import register

register(KINDS["RLHFJob"])
