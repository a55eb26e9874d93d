"""kopf handlers of FineTuneJob."""

from ..api import KINDS
from .common import register

register(KINDS["FineTuneJob"])
