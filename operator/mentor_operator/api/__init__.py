"""The API of Mentor's five kinds: the single source of truth for CRDs, operator and CLI."""

from . import domaindataset, evaluation, finetunejob, modeldeployment, rlhfjob
from .common import API_VERSION, GROUP, VERSION, KindApi

KINDS: dict[str, KindApi] = {
    module.KIND.info.kind: module.KIND
    for module in (domaindataset, finetunejob, rlhfjob, evaluation, modeldeployment)
}

__all__ = ["API_VERSION", "GROUP", "KINDS", "KindApi", "VERSION"]
