"""Which instance of which service and version is answering: sent with every reply."""

from __future__ import annotations

from dataclasses import dataclass

VERSION_HEADER = "x-mesh-version"
INSTANCE_HEADER = "x-mesh-instance"


@dataclass(frozen=True)
class Instance:
    """One running copy of a service, e.g. users / v2 / users-v2-a."""

    service: str
    version: str
    instance: str

    def __post_init__(self) -> None:
        for field in ("service", "version", "instance"):
            if not getattr(self, field):
                raise ValueError(f"instance {field} must not be empty")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The initial metadata that makes canary routing visible to any client."""
        return ((VERSION_HEADER, self.version), (INSTANCE_HEADER, self.instance))
