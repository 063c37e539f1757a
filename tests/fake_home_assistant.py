"""A fake Home Assistant: the websocket API's messages as Home Assistant 2025.4 sends them.

Only what :mod:`wyoming_amanuensis.home_assistant` uses, each as the core does it
(checked against homeassistant 2025.4.4's ``websocket_api``, ``config/*_registry``,
``homeassistant/exposed_entities`` and the registry helpers):

- ``/api/websocket`` only; ``auth_required`` -> ``auth`` -> ``auth_ok`` or
  ``auth_invalid`` (then the connection is closed);
- result envelopes ``{"id", "type": "result", "success", "result"}``, errors
  ``{"id", "type": "result", "success": false, "error": {"code", "message"}}``
  (``unknown_command``, ``unauthorized`` for non-admins, ``id_reuse``);
- ``homeassistant/expose_entity/list``, ``get_states``,
  ``config/entity_registry/get_entries`` (extended entries, null for ids
  without one), ``config/device_registry/list``, ``config/area_registry/list``,
  ``config/floor_registry/list`` (absent when ``floors=False``, as before 2024.4),
  with every field of the real records;
- ``subscribe_events`` and event envelopes ``{"id", "type": "event", "event":
  {"event_type", "data", "origin", "time_fired", "context"}}``; the mutators
  fire the registry events the core fires for the same change, and none where
  the core fires none (exposing an entity without a registry entry).

The friendly name in a state is computed as the core computes it: the registry
name, else device name + original name for ``has_entity_name`` entities, unless
YAML ``customize`` overrides it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Optional

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

HA_VERSION = "2025.4.4"
# The fake's own websockets logging (every frame at DEBUG, tokens included) is Home Assistant's
# side, not ours: kept out of the logs the tests search for secrets.
_SERVER_LOG = logging.getLogger(__name__)
_SERVER_LOG.setLevel(logging.WARNING)
NOW = time.time()


@dataclass
class Entity:
    entity_id: str
    name: Optional[str] = None            # the user's name (registry)
    original_name: Optional[str] = None   # the integration's name
    aliases: tuple = ()
    area_id: Optional[str] = None
    device_id: Optional[str] = None
    has_entity_name: bool = False
    disabled_by: Optional[str] = None
    assistants: dict = field(default_factory=lambda: {"conversation": True})  # should_expose per assistant
    registry: bool = True                 # False: a YAML entity without a unique id (no registry entry)
    customize_friendly_name: Optional[str] = None
    options: dict = field(default_factory=dict)

    def registry_entry(self) -> dict:
        options = {**self.options, **{a: {"should_expose": v} for a, v in self.assistants.items()}}
        return {
            "area_id": self.area_id, "categories": {}, "config_entry_id": "01JS0CONFIGENTRY00000000000",
            "config_subentry_id": None, "created_at": NOW, "device_id": self.device_id,
            "disabled_by": self.disabled_by, "entity_category": None, "entity_id": self.entity_id,
            "has_entity_name": self.has_entity_name, "hidden_by": None, "icon": None,
            "id": uuid.uuid5(uuid.NAMESPACE_DNS, self.entity_id).hex, "labels": [], "modified_at": NOW,
            "name": self.name, "options": options, "original_name": self.original_name,
            "platform": "demo", "translation_key": None, "unique_id": self.entity_id,
            # extended_dict
            "aliases": list(self.aliases), "capabilities": None, "device_class": None,
            "original_device_class": None, "original_icon": None,
        }


class FakeHomeAssistant:
    def __init__(self, token: str = "good-token", *, floors: bool = True, admin: bool = True,
                 port: int = 0) -> None:
        self.token = token
        self.has_floor_registry = floors
        self.admin = admin
        self.port = port
        self.entities: dict[str, Entity] = {}
        self.devices: dict[str, dict] = {}
        self.areas: dict[str, dict] = {}
        self.floors: dict[str, dict] = {}
        self.auth_attempts = 0
        self.commands: list[str] = []   # command types received, in order
        self._server: Optional[Server] = None
        self._subscriptions: dict[ServerConnection, dict[int, str]] = {}
        self._context_ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ home
    def add_floor(self, floor_id: str, name: str, *, aliases: tuple = (), level: int = 0) -> None:
        self.floors[floor_id] = {"aliases": list(aliases), "created_at": NOW, "floor_id": floor_id, "icon": None,
                                 "level": level, "name": name, "modified_at": NOW}

    def add_area(self, area_id: str, name: str, *, aliases: tuple = (), floor_id: Optional[str] = None) -> None:
        self.areas[area_id] = {"aliases": list(aliases), "area_id": area_id, "floor_id": floor_id,
                               "humidity_entity_id": None, "icon": None, "labels": [], "name": name,
                               "picture": None, "temperature_entity_id": None, "created_at": NOW,
                               "modified_at": NOW}

    def add_device(self, device_id: str, name: str, *, name_by_user: Optional[str] = None,
                   area_id: Optional[str] = None) -> None:
        self.devices[device_id] = {
            "area_id": area_id, "configuration_url": None, "config_entries": ["01JS0CONFIGENTRY00000000000"],
            "config_entries_subentries": {"01JS0CONFIGENTRY00000000000": [None]},
            "connections": [], "created_at": NOW, "disabled_by": None, "entry_type": None, "hw_version": None,
            "id": device_id, "identifiers": [["demo", device_id]], "labels": [], "manufacturer": "Demo",
            "model": "Model 1", "model_id": None, "modified_at": NOW, "name_by_user": name_by_user,
            "name": name, "primary_config_entry": "01JS0CONFIGENTRY00000000000", "serial_number": None,
            "sw_version": None, "via_device_id": None,
        }

    def add_entity(self, entity_id: str, **fields: Any) -> Entity:
        self.entities[entity_id] = entity = Entity(entity_id, **fields)
        return entity

    # ------------------------------------------ changes, with the core's events
    async def rename_area(self, area_id: str, name: str) -> None:
        self.areas[area_id] = {**self.areas[area_id], "name": name}
        await self.fire("area_registry_updated", {"action": "update", "area_id": area_id})

    async def rename_entity(self, entity_id: str, name: str) -> None:
        entity = self.entities[entity_id]
        old, entity.name = entity.name, name
        await self.fire("entity_registry_updated",
                        {"action": "update", "entity_id": entity_id, "changes": {"name": old}})

    async def expose(self, entity_id: str, exposed: bool = True, assistant: str = "conversation") -> None:
        """Like exposed_entities.async_set_assistant_option: a registry entity's exposure lives in
        its registry options (an entity_registry_updated event); any other entity's in a separate
        store, and no event tells of it."""
        entity = self.entities[entity_id]
        old_options = entity.registry_entry()["options"]
        entity.assistants = {**entity.assistants, assistant: exposed}
        if entity.registry:
            await self.fire("entity_registry_updated",
                            {"action": "update", "entity_id": entity_id, "changes": {"options": old_options}})

    async def fire(self, event_type: str, data: dict) -> None:
        event = {"event_type": event_type, "data": data, "origin": "LOCAL",
                 "time_fired": "2025-04-25T09:17:00.000000+00:00",
                 "context": {"id": f"01JS0CONTEXT{next(self._context_ids):014d}", "parent_id": None,
                             "user_id": None}}
        for ws, subscriptions in list(self._subscriptions.items()):
            for iden, subscribed in subscriptions.items():
                if subscribed == event_type:
                    try:
                        await ws.send(json.dumps({"id": iden, "type": "event", "event": event}))
                    except ConnectionClosed:
                        pass

    # --------------------------------------------------------------- serving
    async def start(self) -> "FakeHomeAssistant":
        self._server = await serve(self._connection, "127.0.0.1", self.port, process_request=self._only_api,
                                   logger=_SERVER_LOG)
        self.port = self._server.sockets[0].getsockname()[1]  # the same port again after a restart
        return self

    async def stop(self) -> None:
        """Home Assistant going away: every connection closed, nothing listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    def _only_api(connection: ServerConnection, request: Any) -> Any:
        if request.path != "/api/websocket":
            return connection.respond(HTTPStatus.NOT_FOUND, "404: Not Found\n")
        return None

    async def _connection(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "auth_required", "ha_version": HA_VERSION}))
        auth = json.loads(await ws.recv())
        self.auth_attempts += 1
        if auth.get("type") != "auth" or auth.get("access_token") != self.token:
            await ws.send(json.dumps({"type": "auth_invalid", "message": "Invalid access token or password"}))
            return  # the core disconnects
        await ws.send(json.dumps({"type": "auth_ok", "ha_version": HA_VERSION}))
        self._subscriptions[ws] = {}
        last_id = 0
        try:
            async for raw in ws:
                msg = json.loads(raw)
                iden, kind = msg.get("id"), msg.get("type")
                self.commands.append(kind)
                if not isinstance(iden, int) or iden <= last_id:
                    await ws.send(json.dumps(self._error(iden, "id_reuse", "Identifier values have to increase.")))
                    continue
                last_id = iden
                await ws.send(json.dumps(self._answer(ws, iden, kind, msg)))
        except ConnectionClosed:
            pass
        finally:
            self._subscriptions.pop(ws, None)

    @staticmethod
    def _error(iden: Any, code: str, message: str) -> dict:
        return {"id": iden, "type": "result", "success": False, "error": {"code": code, "message": message}}

    def _answer(self, ws: ServerConnection, iden: int, kind: str, msg: dict) -> dict:
        admin_only = {"homeassistant/expose_entity/list", "config/entity_registry/get_entries",
                      "config/device_registry/list"}
        if kind in admin_only and not self.admin:
            return self._error(iden, "unauthorized", "Unauthorized")
        if kind == "subscribe_events":
            self._subscriptions[ws][iden] = msg["event_type"]
            result: Any = None
        elif kind == "homeassistant/expose_entity/list":
            result = {"exposed_entities": {
                e.entity_id: {a: True for a, on in e.assistants.items() if on}
                for e in self.entities.values() if any(e.assistants.values())}}
        elif kind == "get_states":
            result = [self._state(e) for e in self.entities.values() if not e.disabled_by]
        elif kind == "config/entity_registry/get_entries":
            result = {eid: (self.entities[eid].registry_entry()
                            if eid in self.entities and self.entities[eid].registry else None)
                      for eid in msg["entity_ids"]}
        elif kind == "config/device_registry/list":
            result = list(self.devices.values())
        elif kind == "config/area_registry/list":
            result = list(self.areas.values())
        elif kind == "config/floor_registry/list" and self.has_floor_registry:
            result = list(self.floors.values())
        else:
            return self._error(iden, "unknown_command", "Unknown command.")
        return {"id": iden, "type": "result", "success": True, "result": result}

    def _state(self, entity: Entity) -> dict:
        device = self.devices.get(entity.device_id or "") or {}
        device_name = device.get("name_by_user") or device.get("name")
        name = entity.name
        if name is None:
            name = entity.original_name
            if entity.has_entity_name and device_name:
                name = f"{device_name} {name}" if name else device_name
        attributes = {"friendly_name": entity.customize_friendly_name or name} if (
            entity.customize_friendly_name or name) else {}
        context = {"id": f"01JS0STATE{next(self._context_ids):016d}", "parent_id": None, "user_id": None}
        return {"entity_id": entity.entity_id, "state": "off", "attributes": attributes,
                "last_changed": "2025-04-25T09:17:00+00:00", "last_reported": "2025-04-25T09:17:00+00:00",
                "last_updated": "2025-04-25T09:17:00+00:00", "context": context}
