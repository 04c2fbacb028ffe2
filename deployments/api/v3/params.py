"""Parameters the v3 routers share (names and descriptions as in the contract)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from deployments.api.auth import Key
from deployments.api.v3.access import v3_key

WorkspaceId = Annotated[str, Path(description="ID of the workspace")]
PeerId = Annotated[str, Path(description="ID of the peer")]
SessionId = Annotated[str, Path(description="ID of the session")]
MessageId = Annotated[str, Path(description="ID of the message")]

PageNumber = Annotated[int, Query(ge=1, description="Page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Page size")]
Reverse = Annotated[bool, Query(description="Whether to reverse the order of results")]

V3Key = Annotated[Key, Depends(v3_key)]
