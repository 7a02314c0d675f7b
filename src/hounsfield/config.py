"""Typed settings (pydantic-settings).

Sources, highest priority first: explicit keyword arguments, ``HOUNSFIELD_*`` environment
variables (nested with ``__``, e.g. ``HOUNSFIELD_DICOM__PORT``), the TOML file named by
``HOUNSFIELD_CONFIG`` (or passed to :func:`load_settings`), then defaults.

Settings are passed in explicitly (to the archive, servers, workers); nothing reads a global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
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


class DeploySettings(BaseModel):
    """The clinical pipeline: routing rules (see docs/howto/routing-rules.md)."""

    rules_file: Path | None = Field(
        default=None, description="routing rules YAML file; default <data_dir>/rules.yaml")


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
    deploy: DeploySettings = Field(default_factory=DeploySettings)

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
