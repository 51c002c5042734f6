"""``PlatformAdminProvider``: an OpenFeature provider over the client's local copy.

Requires the ``openfeature`` extra (``pip install './clients/python[openfeature]'``).

* Flag keys resolve as booleans, for the tenant in the evaluation context (attribute
  ``tenantId``, else the targeting key; a ULID). Reason ``TARGETING_MATCH`` when a tenant
  override decided, ``DEFAULT`` for the flag's default, ``DISABLED`` for an archived flag
  (with the caller's default value). Never ``STATIC``: every answer depends on the tenant.
* Config keys resolve as ``config:<key>`` with their own type (integer, boolean, string;
  float for an integer key): ``TARGETING_MATCH`` when a TENANT or NODE row decided
  (attribute ``nodeId`` selects NODE rows), ``DEFAULT`` otherwise; the deciding scope is
  in the metadata.
* Events follow the client's state: READY, STALE, ERROR, and CONFIGURATION_CHANGED with
  the changed key (``config:<key>`` for configs) for every change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import (
    ErrorCode,
    FlagNotFoundError,
    InvalidContextError,
    ProviderNotReadyError,
    TargetingKeyMissingError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from domain.flags import Reason as FlagReason
from domain.ids import is_ulid
from platform_admin_client.client import Client
from platform_admin_client.errors import UnknownKey
from platform_admin_client.state import State
from platform_admin_client.store import Change

CONFIG_PREFIX = "config:"


class PlatformAdminProvider(AbstractProvider):
    """OpenFeature answers from ``client``; ``close_client`` closes it on shutdown."""

    def __init__(
        self, client: Client, *, init_timeout_s: float = 10.0, close_client: bool = False
    ) -> None:
        super().__init__()
        self.client = client
        self.init_timeout_s = init_timeout_s
        self.close_client = close_client
        self._attached = False

    # --- lifecycle and events ---------------------------------------------------------------

    def get_metadata(self) -> Metadata:
        return Metadata(name="platform-admin")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        if not self._attached:
            self._attached = True
            self.client.on_state(self._on_state)
            self.client.on_change(self._on_change)
        if not self.client.wait_ready(self.init_timeout_s):
            why = self.client.error or f"not READY after {self.init_timeout_s}s"
            raise ProviderNotReadyError(f"platform-admin client is {self.client.state}: {why}")

    def shutdown(self) -> None:
        if self.close_client:
            self.client.close()

    def _on_state(self, state: State) -> None:
        if state is State.READY:
            self.emit_provider_ready(ProviderEventDetails())
        elif state is State.STALE:
            self.emit_provider_stale(ProviderEventDetails(message="no news from platform-admin"))
        else:
            self.emit_provider_error(
                ProviderEventDetails(message=str(self.client.error), error_code=ErrorCode.GENERAL)
            )

    def _on_change(self, change: Change) -> None:
        key = change.key if change.kind == "flag" else CONFIG_PREFIX + change.key
        self.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=[key]))

    # --- resolution -------------------------------------------------------------------------

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        if flag_key.startswith(CONFIG_PREFIX):
            return self._config(flag_key, default_value, bool, evaluation_context)
        tenant = _tenant(evaluation_context, required=True)
        assert tenant is not None
        try:
            answer = self.client.evaluate(flag_key, tenant)
        except UnknownKey:
            raise FlagNotFoundError(f"no flag {flag_key!r}") from None
        state = self.client.flag_state(flag_key)
        metadata = {"etag": str(state.version)} if state is not None else {}
        if answer.reason is FlagReason.ARCHIVED:
            return FlagResolutionDetails(
                default_value, reason=Reason.DISABLED, flag_metadata=metadata
            )
        reason = Reason.DEFAULT if answer.reason is FlagReason.DEFAULT else Reason.TARGETING_MATCH
        return FlagResolutionDetails(
            answer.enabled,
            reason=reason,
            variant="on" if answer.enabled else "off",
            flag_metadata=metadata,
        )

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._config(flag_key, default_value, str, evaluation_context)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._config(flag_key, default_value, int, evaluation_context)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        found = self._config(flag_key, int(default_value), int, evaluation_context)
        return FlagResolutionDetails(
            float(found.value),
            reason=found.reason,
            variant=found.variant,
            flag_metadata=found.flag_metadata,
        )

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        raise TypeMismatchError(f"{flag_key!r} is not an object (flags are booleans)")

    def _config(
        self,
        flag_key: str,
        default_value: Any,
        kind: type[Any],
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        if not flag_key.startswith(CONFIG_PREFIX):
            if self.client.flag_state(flag_key) is not None:
                raise TypeMismatchError(f"flag {flag_key!r} is a boolean")
            raise FlagNotFoundError(f"no flag {flag_key!r}")
        key = flag_key.removeprefix(CONFIG_PREFIX)
        tenant = _tenant(evaluation_context, required=False)
        node = _attribute(evaluation_context, "nodeId")
        try:
            found = self.client.resolve(key, tenant, node)
        except UnknownKey:
            raise FlagNotFoundError(f"no config key {key!r}") from None
        if type(found.value) is not kind:  # bool is an int: compare exact types
            raise TypeMismatchError(
                f"config {key!r} is {type(found.value).__name__}, not {kind.__name__}"
            )
        decided = found.scope is not None and found.scope.value in ("TENANT", "NODE")
        return FlagResolutionDetails(
            found.value,
            reason=Reason.TARGETING_MATCH if decided else Reason.DEFAULT,
            flag_metadata={"scope": found.scope.value if found.scope else "DEFAULT"},
        )


def _attribute(context: EvaluationContext | None, name: str) -> str | None:
    if context is None:
        return None
    value = context.attributes.get(name)
    return value if isinstance(value, str) and value else None


def _tenant(context: EvaluationContext | None, *, required: bool) -> str | None:
    tenant = _attribute(context, "tenantId") or (context.targeting_key if context else None)
    if not tenant:
        if required:
            raise TargetingKeyMissingError("the context needs a tenantId or targeting key")
        return None
    if not is_ulid(tenant.upper()):
        raise InvalidContextError(f"tenantId {tenant!r} is not a ULID")
    return tenant
