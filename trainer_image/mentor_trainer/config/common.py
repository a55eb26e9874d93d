"""Shared building blocks of every stage config.

These models are imported by the operator too (a custom resource's training section IS the
stage's config), so this package must stay light: pydantic and the stdlib only.

Cross-field rules are written once, in CEL, and attached to the model that owns them:
the CRD generator copies them into `x-kubernetes-validations` (so the API server enforces
them at `kubectl apply`) and the model evaluates the same expressions offline (so
`mentor validate` and the trainer enforce exactly the same rules).
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

# URI schemes by what they may point at; the pattern lands in the CRD so a bad scheme is
# rejected by the API server with the field's path. No URI may carry credentials
# (user:password@host): specs and rendered configs are stored in the clear (ConfigMaps), so
# secrets come from Secrets. RE2 (the API server's regex) has no look-ahead, hence the forms.
_NO_USERINFO = r"://([^/@]+(/.*)?|/.+)$"
STORAGE_URI_PATTERN = r"^(s3|pvc|file)" + _NO_USERINFO
MODEL_URI_PATTERN = r"^(s3|pvc|file|mlflow|hf)" + _NO_USERINFO
HTTP_URL_PATTERN = r"^https?://[^/@]+(/.*)?$"
TRACKING_URI_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.-]*" + _NO_USERINFO[:-1] + r"|[^:@]+)$"

StorageUri = Annotated[
    str,
    Field(
        pattern=STORAGE_URI_PATTERN,
        max_length=2048,
        description="s3://bucket/key, pvc://claim/path or file:///path.",
    ),
]
ModelUri = Annotated[
    str,
    Field(
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description="s3://, pvc://, file://, mlflow://models/<name>/<version> or hf://org/name.",
    ),
]
HttpUrl = Annotated[
    str, Field(pattern=HTTP_URL_PATTERN, max_length=2048, description="An http(s) URL.")
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class CelRule(BaseModel):
    """One cross-field rule: a Kubernetes CEL expression over `self` and its message."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    field_path: str | None = None

    def as_crd(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry

    @property
    def is_transition_rule(self) -> bool:
        # Rules over oldSelf only make sense on update; offline there is no old object.
        return "oldSelf" in self.rule


def exactly_one(first: str, second: str) -> CelRule:
    """The rule for two alternative fields (wire names), reported on the first."""
    return CelRule(
        rule=f"has(self.{first}) != has(self.{second})",
        message=f"set exactly one of {first} or {second}",
        field_path=f".{first}",
    )


@functools.lru_cache(maxsize=None)
def _compiled(rule: str):
    import celpy  # imported lazily: only needed where rules are evaluated

    env = celpy.Environment()
    return env.program(env.compile(rule))


# Validation context for data the API server has already checked against the same rules
# at admission (the operator's view of a stored object); CEL evaluation is skipped there.
ADMITTED = {"cel": False}


def evaluate_cel(rule: str, value: dict[str, Any]) -> bool:
    import celpy

    result = _compiled(rule).evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def all_cel_rules(model: type) -> tuple[CelRule, ...]:
    """The rules a model class declares itself plus those of its bases, each once."""
    rules: list[CelRule] = []
    for klass in reversed(model.__mro__):
        for rule in klass.__dict__.get("cel_rules", ()):
            if rule not in rules:
                rules.append(rule)
    return tuple(rules)


class Spec(BaseModel):
    """Base of every spec/config model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    # Cross-field rules this class adds; subclasses inherit them (see all_cel_rules).
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self, info: ValidationInfo):
        rules = all_cel_rules(type(self))
        if not rules or (info.context or {}).get("cel") is False:
            return self
        wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for rule in rules:
            if rule.is_transition_rule:
                continue
            if not evaluate_cel(rule.rule, wire):
                where = f"{rule.field_path.lstrip('.')}: " if rule.field_path else ""
                raise ValueError(f"{where}{rule.message}")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        # Rules travel with the schema so the CRD generator needs no side table.
        json_schema = handler(core_schema)
        rules = all_cel_rules(cls)
        if rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [rule.as_crd() for rule in rules]
        return json_schema

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SecretKeyRef(Spec):
    """A key of a Kubernetes Secret in the resource's namespace; the value is never logged."""

    name: str = Field(min_length=1, description="Name of the Secret.")
    key: str = Field(min_length=1, description="Key inside the Secret.")

    @property
    def env_name(self) -> str:
        """The variable the operator fills from the Secret and the stage reads:
        MENTOR_SECRET_<NAME>_<KEY>, so no value ever sits in a config or a log."""
        return re.sub(r"[^A-Za-z0-9]", "_", f"MENTOR_SECRET_{self.name}_{self.key}").upper()


def secret_refs(model: BaseModel) -> list[SecretKeyRef]:
    """Every SecretKeyRef anywhere in a config, each once."""
    found: list[SecretKeyRef] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretKeyRef):
            if value not in found:
                found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(model)
    return found


class Endpoint(Spec):
    """An OpenAI-compatible HTTP endpoint (teacher model, judge)."""

    url: HttpUrl = Field(description="Base URL of the OpenAI-compatible API, e.g. http://teacher:8000/v1.")
    model: str = Field(min_length=1, description="Model name sent with each request.")
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding the API key; omitted for endpoints without auth."
    )
    timeout_seconds: PositiveInt = Field(default=60, description="Per-request timeout in seconds.")
    max_concurrency: PositiveInt = Field(default=4, description="Requests in flight at once.")


class Hyperparameters(Spec):
    """Optimisation settings shared by supervised and preference training."""

    epochs: float = Field(default=3.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: PositiveInt | None = Field(
        default=None, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = Field(
        default="cosine",
        description="Learning-rate schedule after warm-up.",
    )
    warmup_ratio: Fraction = Field(default=0.03, description="Share of steps spent warming up the learning rate.")
    per_device_batch_size: PositiveInt = Field(default=4, description="Micro-batch size per GPU.")
    gradient_accumulation_steps: PositiveInt = Field(
        default=1, description="Micro-batches accumulated per optimizer step."
    )
    max_seq_length: PositiveInt = Field(default=2048, le=131072, description="Tokens per training sequence.")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16",
        description="Training precision; bf16 on GPUs that support it, fp32 on CPU.",
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    seed: NonNegativeInt = Field(default=42, description="Seed for data order and initialisation.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory."
    )


class LoraConfig(Spec):
    """Low-rank adapter settings (LoRA, DoRA, QLoRA)."""

    r: PositiveInt = Field(default=16, le=1024, description="Adapter rank.")
    alpha: PositiveInt = Field(default=32, description="Scaling numerator (scale = alpha / r).")
    dropout: Fraction = Field(default=0.05, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class RunIdentity(Spec):
    """Which custom resource a stage runs for; used for tracking tags and artifact paths."""

    kind: str = Field(description="Kind of the resource.")
    name: str = Field(description="Name of the resource.")
    namespace: str = Field(default="default", description="Namespace of the resource.")
    uid: str = Field(default="local", description="UID of the resource (\"local\" in local mode).")
    generation: int = Field(default=1, description="metadata.generation the config was rendered from.")


class Tracking(Spec):
    """MLflow experiment tracking."""

    uri: str | None = Field(
        default=None,
        pattern=TRACKING_URI_PATTERN,
        max_length=2048,
        description=(
            "MLflow tracking URI (http(s)://, sqlite:///..., file:///...), without credentials; the operator fills it "
            "from its settings."
        ),
    )
    experiment: str | None = Field(default=None, description="Experiment name; defaults to <namespace>/<kind>.")
    registered_model_name: str | None = Field(
        default=None, description="Register the output model under this name on success."
    )


class StageRuntime(Spec):
    """What every stage needs besides its own options: identity, output, tracking, progress."""

    run: RunIdentity = Field(description="The resource this stage runs for.")
    output_uri: StorageUri = Field(description="Everything the stage writes goes under this URI.")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow tracking.")
    progress_file: str | None = Field(
        default=None, description="Where the stage writes live progress as JSON (read by the operator or the local runner)."
    )


class Progress(Spec):
    """Live progress, reported by a stage while it runs: written to its progress file and
    merge-patched into the resource's status.progress."""

    phase: str | None = Field(default=None, description="What the stage is doing (preparing, training, ingest, ...).")
    documents: NonNegativeInt | None = Field(default=None, description="Documents processed (data stage).")
    chunks: NonNegativeInt | None = Field(default=None, description="Chunks processed (data stage: synthesis, index).")
    reused: bool | None = Field(default=None, description="The stage found identical outputs and reused them.")
    step: NonNegativeInt | None = Field(default=None, description="Optimizer steps (or evaluation suites) done.")
    total_steps: NonNegativeInt | None = Field(default=None, description="Optimizer steps (or evaluation suites) planned.")
    epoch: float | None = Field(default=None, description="Current epoch (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest validation loss.")
    reward: float | None = Field(default=None, description="Latest mean reward (grpo, ppo).")
    reward_margin: float | None = Field(
        default=None, description="Latest chosen-minus-rejected reward margin (dpo, orpo, kto, reward-model)."
    )
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    eta_seconds: float | None = Field(default=None, description="Estimated time left.")
    percent: str | None = Field(default=None, description="step/total as a percentage, for printing.")
    updated_at: str | None = Field(default=None, description="When the stage last reported (RFC 3339).")


class Verdict(NamedTuple):
    """A judgement a stage's result carries (an Evaluation's gates): becomes a condition."""

    passed: bool
    reason: str
    message: str


class StageResult(Spec):
    """Base of what a stage's `main(config)` returns. The CLI writes it as the container's
    termination message and the kind's status model inherits it, so a result field is
    declared once and reaches `kubectl get` by itself."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "StageResult":
        """The result a stage reported; top-level keys this version does not know (a newer
        trainer image) are left out rather than failing the status."""
        known = {field.alias or name for name, field in cls.model_fields.items()}
        return cls.model_validate({key: value for key, value in data.items() if key in known})

    def with_defaults(self, output_uri: str | None) -> "StageResult":
        """The result with conventional output locations filled in where it said nothing."""
        return self

    def verdict(self) -> Verdict | None:
        """The stage's pass/fail judgement, if it makes one."""
        return None
