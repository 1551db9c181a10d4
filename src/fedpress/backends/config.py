"""The ``simulation:`` config section: which backend runs the clients and with what resources.

Kept here (not in ``fedpress.config``) so the backend owns its keys; ``fedpress.config`` only
mounts the section. No Ray import here: validating a config must not need the optional extra.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimulationConfig(BaseModel):
    """Backend of a simulated run. Results do not depend on it (same seed, same event log);
    only speed, memory and where the work runs do."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str | None = Field(
        None,
        description="HOST:PORT of a running cluster ('auto': the local one); absent: start one",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs each client (actor) holds; fractions ok")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each client (actor) holds; fractions ok")
    num_actors: int | None = Field(
        None, ge=1, description="actor pool size (default: as many as the cluster's CPUs/GPUs fit)"
    )
    on_failure: Literal["retry", "fail"] = Field(
        "retry", description="a client whose actor died: retry its work, or report it failed"
    )
    max_retries: int = Field(3, ge=0, description="retries of one dispatch before it is failed")
    object_store_mb: int | None = Field(
        None, ge=64, description="object store of a locally started instance (MB)"
    )

    @model_validator(mode="after")
    def _ray_keys_need_ray(self) -> SimulationConfig:
        if self.backend != "ray" and self.ray_address is not None:
            raise ValueError("ray_address is set but backend is not 'ray'")
        return self
