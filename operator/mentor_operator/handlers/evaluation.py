"""kopf handlers of Evaluation."""

from ..api import KINDS
from .common import register

register(KINDS["Evaluation"])
