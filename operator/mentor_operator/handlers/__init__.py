"""kopf handlers: one module per kind, the child watches, and operator start-up."""

from . import children, domaindataset, evaluation, finetunejob, modeldeployment, rlhfjob, startup

__all__ = ["children", "domaindataset", "evaluation", "finetunejob", "modeldeployment", "rlhfjob", "startup"]
