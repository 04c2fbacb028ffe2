"""Who is in a session, as the deriver needs to know it: the senders of a batch and the session's
members, with the configuration that says who observes whom (pipelines/deriver/observers.py decides).
"""

from __future__ import annotations

from collections.abc import Collection as AbstractCollection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Text


@dataclass(frozen=True, slots=True)
class Peer:
    """A sender or member of the session: the peer, and its membership (if it is or was a member)."""

    id: str
    name: str
    assistant: bool
    configuration: dict[str, Any]
    member: bool  # a present member of the session
    observe_me: bool | None  # the session's configuration of the peer (None: not said)
    observe_others: bool | None


@dataclass(frozen=True, slots=True)
class Scene:
    session_id: str
    owner_id: str | None  # a v1 session's user; None for a v3 session
    workspace_configuration: dict[str, Any]
    session_configuration: dict[str, Any]
    peers: dict[str, Peer] = field(default_factory=dict)  # by id: the batch's senders and the members

    def name(self, peer_id: str) -> str:
        peer = self.peers.get(peer_id)
        return peer.name if peer is not None else "assistant"


_SESSION = text(
    """
    SELECT s.user_id, s.configuration AS session_configuration, a.configuration AS app_configuration
    FROM sessions s JOIN apps a ON a.id = s.app_id WHERE s.id = :session_id
    """
)
_PEERS = text(
    """
    SELECT u.id, u.name, u.assistant, u.configuration,
           sp.peer_id IS NOT NULL AND sp.left_at IS NULL AS member, sp.observe_me, sp.observe_others
    FROM users u
    LEFT JOIN session_peers sp ON sp.session_id = :session_id AND sp.peer_id = u.id
    WHERE u.id = ANY(:senders)
       OR u.id IN (SELECT peer_id FROM session_peers WHERE session_id = :session_id AND left_at IS NULL)
    ORDER BY u.id
    """
).bindparams(bindparam("senders", type_=ARRAY(Text)))


async def scene_of(db: AsyncConnection, session_id: str, senders: AbstractCollection[str]) -> Scene | None:
    """The session's scene for a batch sent by ``senders`` (peer ids); None if the session is gone."""
    session = (await db.execute(_SESSION, {"session_id": session_id})).first()
    if session is None:
        return None
    rows = await db.execute(_PEERS, {"session_id": session_id, "senders": sorted(senders)})
    peers = {
        row.id: Peer(
            row.id,
            row.name,
            row.assistant,
            row.configuration or {},
            bool(row.member),
            row.observe_me,
            row.observe_others,
        )
        for row in rows
    }
    return Scene(
        session_id,
        session.user_id,
        session.app_configuration or {},
        session.session_configuration or {},
        peers,
    )
