"""kopf handlers of DomainDataset."""

from ..api import KINDS
from .common import register

register(KINDS["DomainDataset"])
