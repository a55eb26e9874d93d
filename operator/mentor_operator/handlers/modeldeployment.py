"""kopf handlers of ModelDeployment."""

from ..api import KINDS
from .common import register

register(KINDS["ModelDeployment"])
