"""Who observes whom in a batch, as Honcho v3 configures it, and whether a session is reasoned about or
summarised at all.

- A sender is observed when its ``observe_me`` is on: the session's configuration of the peer, else the
  peer's own ``configuration.observe_me``, else on, except for an assistant peer (the one Rapport makes
  for v1 sessions), which follows ``deriver.observe_assistants`` (off by default).
- An observed sender's observers are itself and every present member of the session with
  ``observe_others`` on (the session's configuration of that peer; off unless said).
- ``reasoning.enabled`` (or the older ``deriver.enabled``) and ``summary.enabled`` of the session, else of
  the workspace, switch the conclusions and the summaries off; both are on unless said.

A v1 session is the special case: its user is observed by itself, and its assistant peer by no one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.observation import Peer, Scene


def observes_itself(peer: Peer, *, observe_assistants: bool) -> bool:
    if peer.observe_me is not None:
        return peer.observe_me
    said = peer.configuration.get("observe_me")
    if isinstance(said, bool):
        return said
    return observe_assistants if peer.assistant else True


def observations(scene: Scene, senders: Iterable[str], *, observe_assistants: bool) -> dict[str, list[str]]:
    """For each observed sender (in the order given), its observers' peer ids, itself first."""
    watchers = sorted(p.id for p in scene.peers.values() if p.member and p.observe_others)
    observed: dict[str, list[str]] = {}
    for sender in dict.fromkeys(senders):
        peer = scene.peers.get(sender)
        if peer is None or not observes_itself(peer, observe_assistants=observe_assistants):
            continue
        observed[sender] = [sender, *(w for w in watchers if w != sender)]
    return observed


def _switch(configuration: dict[str, Any], section: str) -> bool | None:
    value = configuration.get(section)
    if isinstance(value, dict) and isinstance(value.get("enabled"), bool):
        return bool(value["enabled"])
    return None


def enabled(scene: Scene, section: str) -> bool:
    """Whether ``section`` (``reasoning`` or ``summary``) is on for the session: its own configuration
    first, then its workspace's; on unless said. ``reasoning`` also reads the older ``deriver`` section
    and ``skip_deriver``."""
    sections = [section, "deriver"] if section == "reasoning" else [section]
    for configuration in (scene.session_configuration, scene.workspace_configuration):
        if section == "reasoning" and configuration.get("skip_deriver") is True:
            return False
        for name in sections:
            said = _switch(configuration, name)
            if said is not None:
                return said
    return True
