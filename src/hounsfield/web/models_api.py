"""``/api/models``: registered models, their versions, aliases and promotion history; promote,
demote and rollback (admins: the registry checks the role and audits every attempt).

- ``GET /api/models`` — every model with its versions (Device UID, aliases, the evaluation that
  counts for promotion and its verdict)
- ``GET /api/models/resolve?ref=NAME@ALIAS[&routing=false]`` — the version a reference names;
  by default as routing resolves it (aliases set by an audited promotion only)
- ``GET /api/models/{name}`` — one model, with its history
- ``GET /api/models/{name}/history`` — promotions, demotions and rollbacks, oldest first
- ``POST /api/models/{name}/promote`` ``{"version", "reason", "alias", "report"}``
- ``POST /api/models/{name}/demote`` / ``rollback`` ``{"reason", "alias"}``

Errors: 400 bad reference or body, 403 not an admin, 404 unknown model/version/alias,
409 evaluation does not pass (the reason lists what failed) or already promoted.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from hounsfield.errors import InvalidInput, NotFound
from hounsfield.registry import approval
from hounsfield.registry.mlflow_registry import PRODUCTION, ModelRegistry, ModelVersionInfo
from hounsfield.web.auth import Principal
from hounsfield.web.deps import ArchiveDep, CurrentUser, Reader, client_address

router = APIRouter(prefix="/api/models", tags=["models"])


def get_registry(request: Request) -> ModelRegistry:
    """One registry client per app (MLflow's store is opened once)."""
    reg = getattr(request.app.state, "model_registry", None)
    if reg is None:
        reg = request.app.state.model_registry = ModelRegistry(request.app.state.settings)
    return reg


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


class EvaluationPublic(BaseModel):
    label: str | None = Field(description="the report that counts (None: none attached)")
    passed: bool
    reason: str
    targets: dict[str, Any] | None = None


class VersionPublic(BaseModel):
    ref: str
    name: str
    version: str
    device_uid: str
    aliases: list[str]
    created_at: datetime
    evaluation: EvaluationPublic
    lineage: dict[str, str] = Field(default_factory=dict)


class HistoryPublic(BaseModel):
    action: str
    alias: str
    from_version: str | None
    to_version: str | None
    by: str
    role: str
    at: str
    reason: str
    source: str = ""
    report: str | None = None
    device_uid: str | None = None


class ModelPublic(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[VersionPublic]
    history: list[HistoryPublic] | None = None


class PromoteRequest(BaseModel):
    version: str = Field(pattern=r"^[0-9]{1,9}$", description="the version to promote")
    reason: str = Field(min_length=1, max_length=2000)
    alias: str = Field(default=PRODUCTION, max_length=63)
    report: str | None = Field(default=None, max_length=256,
                               description="the attached report that counts (default: newest)")


class AliasChange(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)
    alias: str = Field(default=PRODUCTION, max_length=63)


_LINEAGE = ("dataset", "dataset_hash", "recipe", "base_model", "code_version", "origin",
            "bundle_name")


def version_public(reg: ModelRegistry, mv: ModelVersionInfo) -> VersionPublic:
    ev = approval.evaluation(reg, mv)
    return VersionPublic(
        ref=mv.ref, name=mv.name, version=mv.version, device_uid=mv.device_uid,
        aliases=list(mv.aliases),
        created_at=datetime.fromtimestamp(mv.created_ms / 1000, tz=timezone.utc),
        evaluation=EvaluationPublic(label=ev.label, passed=ev.passed, reason=ev.reason,
                                    targets=ev.targets),
        lineage={k: mv.tags[k] for k in _LINEAGE if mv.tags.get(k)})


def overview(reg: ModelRegistry, name: str | None = None, *,
             with_history: bool = False) -> list[ModelPublic]:
    """Every registered model (or ``name``) with its versions, newest version first."""
    by_name: dict[str, list[ModelVersionInfo]] = {}
    for mv in reg.versions(name):
        by_name.setdefault(mv.name, []).append(mv)
    out = []
    for nm, mvs in sorted(by_name.items()):
        aliases = {a: mv.version for mv in mvs for a in mv.aliases}
        hist = ([HistoryPublic(**asdict(h)) for h in approval.history(reg, nm)]
                if with_history else None)
        out.append(ModelPublic(name=nm, aliases=aliases, history=hist,
                               versions=[version_public(reg, mv) for mv in reversed(mvs)]))
    return out


def approver(request: Request, principal: Principal) -> approval.Approver:
    return approval.Approver(principal.username, principal.role.value, client_address(request))


@router.get("", response_model=list[ModelPublic], summary="registered models and versions")
def list_models(reg: RegistryDep, user: Reader) -> list[ModelPublic]:
    return overview(reg)


@router.get("/resolve", response_model=VersionPublic,
            summary="the version a reference names (as routing resolves it, by default)")
def resolve(reg: RegistryDep, user: Reader,
            ref: Annotated[str, Query(min_length=1, max_length=256)],
            routing: bool = True) -> VersionPublic:
    mv = approval.resolve_for_routing(reg, ref) if routing else reg.resolve(ref)
    return version_public(reg, mv)


@router.get("/{name}", response_model=ModelPublic, summary="one model with its history")
def show_model(name: str, reg: RegistryDep, user: Reader) -> ModelPublic:
    found = overview(reg, _name(name), with_history=True)
    if not found:
        raise NotFound(f"no registered model named {name!r}")
    return found[0]


@router.get("/{name}/history", response_model=list[HistoryPublic],
            summary="promotions, demotions and rollbacks, oldest first")
def model_history(name: str, reg: RegistryDep, user: Reader) -> list[HistoryPublic]:
    return [HistoryPublic(**asdict(h)) for h in approval.history(reg, _name(name))]


@router.post("/{name}/promote", response_model=HistoryPublic,
             summary="point NAME@ALIAS at a version whose evaluation passes (admins)")
def promote(name: str, body: PromoteRequest, request: Request, reg: RegistryDep,
            archive: ArchiveDep, user: CurrentUser) -> HistoryPublic:
    e = approval.promote(reg, archive, f"{_name(name)}@{body.version}",
                         approver=approver(request, user), reason=body.reason,
                         alias=body.alias, report=body.report)
    return HistoryPublic(**asdict(e))


@router.post("/{name}/demote", response_model=HistoryPublic, summary="remove NAME@ALIAS (admins)")
def demote(name: str, body: AliasChange, request: Request, reg: RegistryDep,
           archive: ArchiveDep, user: CurrentUser) -> HistoryPublic:
    e = approval.demote(reg, archive, _name(name), approver=approver(request, user),
                        reason=body.reason, alias=body.alias)
    return HistoryPublic(**asdict(e))


@router.post("/{name}/rollback", response_model=HistoryPublic,
             summary="NAME@ALIAS back to the version before (admins)")
def rollback(name: str, body: AliasChange, request: Request, reg: RegistryDep,
             archive: ArchiveDep, user: CurrentUser) -> HistoryPublic:
    e = approval.rollback(reg, archive, _name(name), approver=approver(request, user),
                          reason=body.reason, alias=body.alias)
    return HistoryPublic(**asdict(e))


def _name(name: str) -> str:
    if not name or len(name) > 256 or "@" in name or "'" in name:
        raise InvalidInput(f"model name {name[:64]!r}: a plain NAME (no '@' or quotes)")
    return name
