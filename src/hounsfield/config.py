"""Typed settings (pydantic-settings).

Sources, highest priority first: explicit keyword arguments, ``HOUNSFIELD_*`` environment
variables (nested with ``__``, e.g. ``HOUNSFIELD_DICOM__PORT``), the TOML file named by
``HOUNSFIELD_CONFIG`` (or passed to :func:`load_settings`), then defaults.

Settings are passed in explicitly (to the archive, servers, workers); nothing reads a global.
"""

from __future__ import annotations

import os
from pathlib import Path
import hashlib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hounsfield.errors import ConfigurationError

Profile = Literal["demo", "production"]
DuplicatePolicy = Literal["keep-first", "replace"]


class RemoteNode(BaseModel):
    """A DICOM peer known by name (C-MOVE destination, send target, PACS to query)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False


class DicomSettings(BaseModel):
    """The DICOM node (DIMSE) — see docs/conformance.md."""

    ae_title: str = "HOUNSFIELD"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    duplicate_policy: DuplicatePolicy = "keep-first"
    allowed_peers: dict[str, str] = Field(
        default_factory=dict,
        description="calling AE title -> allowed host ('*' = any host). Empty + demo = allow all.",
    )
    remotes: dict[str, RemoteNode] = Field(default_factory=dict)
    stable_after_s: float = Field(default=3.0, gt=0)
    max_associations: int = Field(default=32, ge=1)
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu: int = Field(default=0, ge=0, description="0 = unlimited")
    case_insensitive_pn: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    group_commit_max: int = Field(default=64, ge=1, description="C-STOREs per index commit")
    reuse_port: bool = Field(default=False, description=(
        "let several `serve` processes listen on one DICOM port (Linux SO_REUSEPORT spreads "
        "associations over them): uses more than one CPU core"))
    lean_storage: bool = Field(default=True, description=(
        "serve associations that only send (Storage/Verification, no TLS, no role selection) "
        "on the single-thread lean path; false: everything through pynetdicom"))
    scu_retries: int = Field(default=3, ge=0, description="SCU retries per association/instance")
    scu_retry_delay_s: float = Field(default=1.0, ge=0)


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    max_body_mb: int = Field(default=2048, ge=1)
    viewer_dir: Path | None = None


class AiSettings(BaseModel):
    """The AI platform: model registry / tracking (see docs/howto/lung-nodule-detection.md)."""

    mlflow_url: str | None = Field(
        default=None, description="MLflow backend store URL (e.g. postgresql+psycopg://...); "
        "default sqlite:///<data_dir>/mlflow/mlflow.db")


class WebSettings(BaseModel):
    """Users, sessions and the DICOMweb API (see docs/howto/users.md, docs/conformance.md)."""

    session_hours: float = Field(default=12.0, gt=0, description="browser session lifetime")
    token_days: float = Field(default=90.0, gt=0, description="default API token lifetime")
    cookie_secure: bool = Field(default=False, description="send the session cookie over HTTPS only")
    qido_max_limit: int = Field(default=1000, ge=1, description="most results one QIDO-RS page returns")
    demo_user: str = Field(default="demo", description="admin created by the demo profile (password = name)")
    public_url: str | None = Field(
        default=None, description="external base URL (behind a proxy) for absolute URLs we return"
    )


class DeidSettings(BaseModel):
    """De-identification (PS3.15 Annex E) — see docs/conformance.md."""

    vault_key: str | None = Field(
        default=None,
        description="encrypts the pseudonym vault at rest (any long secret; required outside demo)",
    )
    uid_key: str | None = Field(
        default=None, description="keys UID remapping, pseudonyms and date shifts (default secret_key)"
    )
    max_date_shift_days: int = Field(default=3650, ge=1)
    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    clean_descriptors: bool = False
    retain_safe_private: bool = False
    safe_private: list[dict] = Field(
        default_factory=list,
        description="extra safe private attributes: {creator, group, element (offset 0x00-0xFF)}",
    )
    pixel_regions: list[dict] = Field(
        default_factory=list,
        description="burned-in text regions to blank: {manufacturer, model, modality, rows, "
        "columns, regions: [[x, y, w, h], ...]} (glob patterns)",
    )


class UpsSettings(BaseModel):
    """UPS-RS (PS3.18 §11): Hounsfield as worklist manager and performer of AI workitems,
    and as requester mirroring its jobs on an external manager — see docs/howto/ups-rs.md."""

    model_config = {"extra": "forbid"}

    perform: bool = Field(default=True, description=(
        "claim SCHEDULED workitems Hounsfield can do (a workitem code below, a study in the "
        "archive, a routing rule that matches) and perform them as AI jobs"))
    workitem_codes: list[str] = Field(
        default_factory=lambda: ["DCM:110004", "DCM:110003", "99HOUNSFIELD:AI"], description=(
            "Scheduled Workitem Code Sequence codes (SCHEME:VALUE) our performer claims; "
            "DCM 110004 Computer Aided Detection, 110003 Computer Aided Diagnosis (CID 9231)"))
    station_ae: str = Field(default="", description=(
        "our Scheduled Station Name; default the DICOM AE title"))
    retrieve_url: str = Field(default="", description=(
        "base URL of our DICOMweb service put in Output Information Sequence items "
        "(e.g. https://ai.example.org/dicom-web); default http://<http.host>:<http.port>"
        "/dicom-web"))
    mirror_url: str = Field(default="", description=(
        "an external UPS-RS manager's base URL (…/dicom-web): each AI job is mirrored as a "
        "workitem there (create, claim, progress, complete or cancel); empty = no mirroring"))
    mirror_token: SecretStr | None = Field(default=None,
                                           description="bearer token for mirror_url")
    mirror_timeout_s: float = Field(default=10.0, gt=0)
    mirror_triggers: list[str] = Field(
        default_factory=lambda: ["stable", "manual", "api", "console", "mpps"],
        description="the job triggers mirrored (jobs a UPS workitem asked for are not)")


class JobSettings(BaseModel):
    """Durable AI jobs (DBOS) — see docs/howto/clinical-pipeline.md."""

    database_url: str | None = Field(
        default=None, description="DBOS system database; default sqlite:///<data_dir>/jobs.sqlite "
        "(or the index's PostgreSQL database)")
    executor_id: str = Field(default="local", description=(
        "this worker's name in the engine; a restarted worker with the same name recovers its "
        "unfinished jobs (give every worker machine its own)"))
    worker_concurrency: int = Field(default=1, ge=1, description="AI jobs one worker runs at once")
    poll_s: float = Field(default=0.5, gt=0, le=60, description="queue and router polling interval")
    timeout_s: float = Field(default=1800.0, gt=0, description="per-job time limit")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="inference device")


# -- export destinations (hounsfield.pacs.export) ------------------------------------------------
#: every kind of result object the pipeline can make (hounsfield.results)
RESULT_KINDS: tuple[str, ...] = ("SEG", "SR", "SC", "GSPS", "KOS", "PDF")
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"


def check_transfer_syntaxes(v: list[str]) -> list[str]:
    """A profile's (or a destination's) transfer syntaxes: known transfer syntax UIDs (PS3.6
    Annex A), each once; ``ValueError`` naming what is wrong otherwise."""
    from pydicom.uid import UID

    v = [u.strip() for u in v]
    bad = [u for u in v if not re.match(r"^[0-9]+(\.[0-9]+)*$", u) or len(u) > 64]
    if bad:
        raise ValueError(f"transfer syntaxes must be UIDs, got {bad}")
    unknown = [u for u in v if not UID(u).is_transfer_syntax]
    if unknown:
        raise ValueError(f"not a transfer syntax UID (PS3.6 Annex A): "
                         f"{', '.join(f'{u} ({UID(u).name})' if UID(u).name != u else u for u in unknown)}")
    twice = sorted({u for u in v if v.count(u) > 1})
    if twice:
        raise ValueError(f"transfer syntax listed twice: {', '.join(twice)}")
    return v


class OutputProfile(BaseModel):
    """A PACS-compatibility profile: which result objects a destination gets, in which transfer
    syntaxes, whether a delivery counts only once the PACS commits it (Storage Commitment), and
    how a re-run's superseded objects are withdrawn.  Built-in profiles are
    :data:`BUILTIN_PROFILES`; more are defined as data in ``[export.profiles.NAME]``."""

    model_config = {"extra": "forbid"}

    description: str = ""
    objects: list[str] = Field(min_length=1, description=(
        "result kinds sent: " + ", ".join(RESULT_KINDS)))
    transfer_syntaxes: list[str] = Field(default_factory=list, description=(
        "transfer syntax UIDs to send in, preferred first; empty: as stored"))
    storage_commitment: bool = Field(default=False, description=(
        "a delivery counts as done only when the PACS commits it (DIMSE destinations)"))
    supersede: Literal["iocm", "version"] = Field(default="version", description=(
        "iocm: send a rejection KOS for superseded objects; version: the new objects name "
        "their predecessors"))

    @field_validator("objects")
    @classmethod
    def _objects(cls, v: list[str]) -> list[str]:
        kinds = [k.upper() for k in v]
        bad = [k for k in kinds if k not in RESULT_KINDS]
        if bad:
            raise ValueError(f"unknown result kind(s) {bad}: known are {', '.join(RESULT_KINDS)}")
        return list(dict.fromkeys(kinds))

    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntaxes(cls, v: list[str]) -> list[str]:
        return check_transfer_syntaxes(v)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.objects)


#: the profiles every installation has (docs/conformance.md); ``[export.profiles.NAME]`` adds
#: or replaces profiles
BUILTIN_PROFILES: dict[str, OutputProfile] = {
    "ai-ready": OutputProfile(
        description="a PACS that stores and displays SEG and SR (OHIF, most VNAs)",
        objects=["SEG", "SR"]),
    "legacy": OutputProfile(
        description="a PACS that displays only images, presentation states, key objects "
                    "and PDF: secondary captures, GSPS outlines, a KOS and a PDF summary",
        objects=["SC", "GSPS", "KOS", "PDF"], transfer_syntaxes=[_EXPLICIT_LE, _IMPLICIT_LE]),
    "all": OutputProfile(description="every result object", objects=list(RESULT_KINDS)),
}

#: built-in profile -> the result kinds it sends
OUTPUT_PROFILES: dict[str, frozenset[str]] = {n: p.kinds for n, p in BUILTIN_PROFILES.items()}
_DEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_output_profile(value: str, known: dict[str, OutputProfile] | None = None) -> str:
    names = known if known is not None else BUILTIN_PROFILES
    if value not in names:
        raise ValueError(f"unknown output profile {value!r}: known profiles are "
                         f"{', '.join(names)}")
    return value


class RetryPolicy(BaseModel):
    """Exponential back-off for deliveries: attempt n (1-based) failed -> wait
    ``min(max_delay_s, initial_delay_s * factor**(n-1))`` (times 1 +/- ``jitter``); after
    ``max_attempts`` failed attempts the object is dead.  The defaults (1 s, x2, 15 min cap,
    20 attempts) keep trying for about 2.5 hours."""

    model_config = {"extra": "forbid"}

    initial_delay_s: float = Field(default=1.0, gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_delay_s: float = Field(default=900.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)
    jitter: float = Field(default=0.0, ge=0, lt=1, description=(
        "spread each delay by up to this fraction (deterministic per key and attempt)"))

    @model_validator(mode="after")
    def _cap(self) -> RetryPolicy:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) is below initial_delay_s "
                             f"({self.initial_delay_s})")
        return self

    def delay(self, attempt: int, *, key: str = "") -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one.
        The jitter is derived from ``key`` and ``attempt`` (the same on a replay)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        exp = min(attempt - 1, 1000)
        base = min(self.max_delay_s, self.initial_delay_s * self.factor ** exp)
        if not self.jitter:
            return base
        h = int.from_bytes(hashlib.sha256(f"{key}\0{attempt}".encode()).digest()[:8], "big")
        return base * (1 + self.jitter * (2 * h / 2**64 - 1))

    def dead(self, attempt: int) -> bool:
        """True once ``attempt`` failed attempts exhaust the policy (no further try)."""
        return attempt >= self.max_attempts

    def total_s(self) -> float:
        """Seconds from the first to the last attempt (without jitter)."""
        return sum(self.delay(n) for n in range(1, self.max_attempts))


class _Destination(BaseModel):
    model_config = {"extra": "forbid"}

    profile: str = Field(default="ai-ready", description=(
        "output profile: ai-ready (SEG+SR) | legacy (SC, GSPS, KOS, PDF) | all | an "
        "[export.profiles] name"))
    storage_commitment: bool | None = Field(default=None, description=(
        "override the profile's storage_commitment"))
    transfer_syntaxes: list[str] | None = Field(default=None, description=(
        "override the profile's transfer_syntaxes"))
    supersede: Literal["iocm", "version"] | None = Field(default=None, description=(
        "override the profile's supersede"))
    max_associations: int = Field(default=2, ge=1, le=64, description=(
        "concurrent associations / STOW requests to this destination, per process"))
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    commitment_timeout_s: float = Field(default=600.0, gt=0, description=(
        "Storage Commitment: how long to wait for the destination's N-EVENT-REPORT after the "
        "N-ACTION; instances not reported by then count as not committed (re-sent next attempt)"))
    commitment_hold_s: float = Field(default=2.0, ge=0, le=60, description=(
        "Storage Commitment: keep the N-ACTION association open this long for a report on it "
        "(a PACS may also report on a new association to our DICOM node)"))


    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntaxes(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_transfer_syntaxes(v)


class DimseDestination(_Destination):
    """C-STORE to a DICOM node: ``remote`` (a ``dicom.remotes`` name) or ae_title/host/port."""

    kind: Literal["dimse"]
    remote: str | None = None
    ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = False

    @model_validator(mode="after")
    def _address(self) -> DimseDestination:
        given = [f for f in ("ae_title", "host", "port") if getattr(self, f) is not None]
        if self.remote is not None and given:
            raise ValueError(f"give either remote or ae_title/host/port, not both ({given})")
        if self.remote is None and len(given) != 3:
            raise ValueError("a dimse destination needs remote (a dicom.remotes name) or all of "
                             "ae_title, host and port")
        return self


class StowDestination(_Destination):
    """STOW-RS (PS3.18 10.5) to a DICOMweb service: ``url`` is its root (``.../dicom-web``)."""

    kind: Literal["stowrs"]
    url: str
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="bearer token")
    password_env: str | None = Field(default=None, description=(
        "read the password from this environment variable (instead of password)"))
    token_env: str | None = Field(default=None, description=(
        "read the bearer token from this environment variable (instead of token)"))
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    max_instances_per_request: int = Field(default=50, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"url must be http(s)://host[:port]/path, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> StowDestination:
        for field, env in (("password", self.password_env), ("token", self.token_env)):
            if env is None:
                continue
            if getattr(self, field) is not None:
                raise ValueError(f"give either {field} or {field}_env, not both")
            value = os.environ.get(env)
            if not value:
                raise ValueError(f"{field}_env names the environment variable {env}, "
                                 "which is not set")
            setattr(self, field, SecretStr(value))
        if (self.username is None) != (self.password is None):
            raise ValueError("basic authentication needs both username and password")
        if self.token is not None and self.username is not None:
            raise ValueError("give either username/password or token, not both")
        return self


Destination = Annotated[DimseDestination | StowDestination, Field(discriminator="kind")]


class ExportSettings(BaseModel):
    """Where results go (``[export.destinations.NAME]``) — see docs/conformance.md."""

    model_config = {"extra": "forbid"}

    destinations: dict[str, Destination] = Field(default_factory=dict)
    profiles: dict[str, OutputProfile] = Field(default_factory=dict, description=(
        "PACS-compatibility profiles beyond (or replacing) the built-in ones"))

    @field_validator("destinations", "profiles")
    @classmethod
    def _names(cls, v: dict) -> dict:
        bad = [n for n in v if not _DEST_NAME.match(n)]
        if bad:
            raise ValueError(f"destination names (and profile names) are 1-64 letters, digits, '.', "
                             f"'_' or '-': {bad}")
        return v

    @model_validator(mode="after")
    def _known_profiles(self) -> ExportSettings:
        known = self.all_profiles()
        for name, dest in self.destinations.items():
            try:
                check_output_profile(dest.profile, known)
            except ValueError as exc:
                raise ValueError(f"export destination {name!r}: {exc}") from None
        return self

    def all_profiles(self) -> dict[str, OutputProfile]:
        """The built-in profiles with ``[export.profiles]`` added over them."""
        return {**BUILTIN_PROFILES, **self.profiles}


class DeploySettings(BaseModel):
    """The clinical pipeline: routing rules (see docs/howto/routing-rules.md)."""

    rules_file: Path | None = Field(
        default=None, description="routing rules YAML file; default <data_dir>/rules.yaml")


class MppsSettings(BaseModel):
    """Modality Performed Procedure Step (PS3.4 Annex F) as a trigger — see docs/howto/mpps.md."""

    mismatch_wait_s: float = Field(default=300.0, gt=0, description=(
        "a COMPLETED MPPS whose referenced instances have not all arrived this long after the "
        "N-SET is flagged 'mismatch' (console, /api/mpps) with the missing SOP Instance UIDs"))
    late_arrival_h: float = Field(default=168.0, gt=0, description=(
        "a mismatched MPPS is still watched this long: if its missing instances arrive, the "
        "study is routed then"))


class Settings(BaseSettings):
    """All of Hounsfield's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="HOUNSFIELD_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    profile: Profile = "production"
    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/index.sqlite"
    )
    site: str = Field(default="local", description="site label recorded on everything ingested")
    secret_key: str | None = Field(
        default=None, description="signs sessions, keys UID remapping; required outside demo"
    )
    fsync: bool = Field(default=True, description="fsync blobs before acknowledging (keep on)")
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    deid: DeidSettings = Field(default_factory=DeidSettings)
    ai: AiSettings = Field(default_factory=AiSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    ups: UpsSettings = Field(default_factory=UpsSettings)
    mpps: MppsSettings = Field(default_factory=MppsSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.secret_key is not None and self.secret_key.strip().lower() in {
            "", "changeme", "change-me", "secret", "demo",
        } and self.profile != "demo":
            raise ValueError("secret_key is a placeholder; set a real one outside the demo profile")
        for name, dest in self.export.destinations.items():
            if getattr(dest, "remote", None) is not None and dest.remote not in self.dicom.remotes:
                raise ValueError(f"export destination {name!r} names remote {dest.remote!r}, "
                                 f"which is not in dicom.remotes "
                                 f"({', '.join(sorted(self.dicom.remotes)) or 'none configured'})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = os.environ.get("HOUNSFIELD_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # -- derived paths -----------------------------------------------------------------------
    @property
    def index_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'index.sqlite'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def require_secret(self) -> str:
        """The secret key; the demo profile gets a fixed, clearly-demo one."""
        if self.secret_key:
            return self.secret_key
        if self.profile == "demo":
            return "hounsfield-demo-secret-not-for-production"
        raise ConfigurationError(
            "no secret_key configured: set HOUNSFIELD_SECRET_KEY (or secret_key in the TOML file)"
        )


def load_settings(config_file: Path | str | None = None, **overrides: object) -> Settings:
    """Build settings; a TOML file given here wins over ``HOUNSFIELD_CONFIG``."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigurationError(f"config file not found: {path}")
        old = os.environ.get("HOUNSFIELD_CONFIG")
        os.environ["HOUNSFIELD_CONFIG"] = str(path)
        try:
            return _build(overrides)
        finally:
            if old is None:
                os.environ.pop("HOUNSFIELD_CONFIG", None)
            else:
                os.environ["HOUNSFIELD_CONFIG"] = old
    return _build(overrides)


def _build(overrides: dict[str, object]) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigurationError(f"invalid settings: {exc}") from exc
