"""FastAPI dependencies of the web layer's routes: those of :mod:`hounsfield.dicomweb.deps`
(one definition for DICOMweb and the web layer alike; DICOMweb sits below web)."""

from hounsfield.dicomweb.deps import (  # noqa: F401
    AiOperator,
    ArchiveDep,
    Auditor,
    CurrentUser,
    MaybeUser,
    Reader,
    SettingsDep,
    UserAdmin,
    Writer,
    client_address,
    current_principal,
    get_archive,
    get_settings,
    optional_principal,
    require,
)
