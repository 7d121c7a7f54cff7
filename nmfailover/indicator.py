"""The tray indicator on the session bus: a StatusNotifierItem (what KDE, waybar and GNOME's AppIndicator
extension show) with its menu over com.canonical.dbusmenu. What it shows comes from nmfailover.tray;
choosing a menu entry hands its Action to the agent, which makes the call with the person's rights.

Plain D-Bus messages, like control.py: the two libraries' ServiceInterface annotations differ.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from loguru import logger

from .bus import (
    DBUS,
    ERROR_INVALID_ARGS,
    ERROR_UNKNOWN_METHOD,
    IFACE_INTROSPECTABLE,
    IFACE_PROPERTIES,
    REQUEST_NAME_DO_NOT_QUEUE,
    Connection,
    Message,
    MessageFlag,
    MessageType,
    Variant,
)
from .notice import Action
from .tray import MenuItem, TrayView, tray_view

ITEM_PATH = "/StatusNotifierItem"
MENU_PATH = "/MenuBar"
ITEM_INTERFACE = "org.kde.StatusNotifierItem"
MENU_INTERFACE = "com.canonical.dbusmenu"
WATCHER = ("org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher", "org.kde.StatusNotifierWatcher")
WATCHER_MATCH = (
    f"type='signal',sender='{DBUS[0]}',interface='{DBUS[2]}',member='NameOwnerChanged',arg0='{WATCHER[0]}'"
)
_LAYOUT = "(ia{sv}av)"
_INTROSPECTION = {
    ITEM_PATH: f"""<node>
  <interface name="{ITEM_INTERFACE}">
    <property name="Category" type="s" access="read"/>
    <property name="Id" type="s" access="read"/>
    <property name="Title" type="s" access="read"/>
    <property name="Status" type="s" access="read"/>
    <property name="WindowId" type="i" access="read"/>
    <property name="IconName" type="s" access="read"/>
    <property name="IconPixmap" type="a(iiay)" access="read"/>
    <property name="OverlayIconName" type="s" access="read"/>
    <property name="AttentionIconName" type="s" access="read"/>
    <property name="AttentionIconPixmap" type="a(iiay)" access="read"/>
    <property name="ToolTip" type="(sa(iiay)ss)" access="read"/>
    <property name="ItemIsMenu" type="b" access="read"/>
    <property name="Menu" type="o" access="read"/>
    <method name="ContextMenu"><arg name="x" type="i"/><arg name="y" type="i"/></method>
    <method name="Activate"><arg name="x" type="i"/><arg name="y" type="i"/></method>
    <method name="SecondaryActivate"><arg name="x" type="i"/><arg name="y" type="i"/></method>
    <method name="Scroll"><arg name="delta" type="i"/><arg name="orientation" type="s"/></method>
    <signal name="NewTitle"/>
    <signal name="NewIcon"/>
    <signal name="NewAttentionIcon"/>
    <signal name="NewToolTip"/>
    <signal name="NewStatus"><arg name="status" type="s"/></signal>
  </interface>
</node>
""",
    MENU_PATH: f"""<node>
  <interface name="{MENU_INTERFACE}">
    <property name="Version" type="u" access="read"/>
    <property name="TextDirection" type="s" access="read"/>
    <property name="Status" type="s" access="read"/>
    <property name="IconThemePath" type="as" access="read"/>
    <method name="GetLayout">
      <arg name="parentId" type="i" direction="in"/>
      <arg name="recursionDepth" type="i" direction="in"/>
      <arg name="propertyNames" type="as" direction="in"/>
      <arg name="revision" type="u" direction="out"/>
      <arg name="layout" type="{_LAYOUT}" direction="out"/>
    </method>
    <method name="GetGroupProperties">
      <arg name="ids" type="ai" direction="in"/>
      <arg name="propertyNames" type="as" direction="in"/>
      <arg name="properties" type="a(ia{{sv}})" direction="out"/>
    </method>
    <method name="GetProperty">
      <arg name="id" type="i" direction="in"/>
      <arg name="name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="Event">
      <arg name="id" type="i" direction="in"/>
      <arg name="eventId" type="s" direction="in"/>
      <arg name="data" type="v" direction="in"/>
      <arg name="timestamp" type="u" direction="in"/>
    </method>
    <method name="EventGroup">
      <arg name="events" type="a(isvu)" direction="in"/>
      <arg name="idErrors" type="ai" direction="out"/>
    </method>
    <method name="AboutToShow">
      <arg name="id" type="i" direction="in"/>
      <arg name="needUpdate" type="b" direction="out"/>
    </method>
    <method name="AboutToShowGroup">
      <arg name="ids" type="ai" direction="in"/>
      <arg name="updatesNeeded" type="ai" direction="out"/>
      <arg name="idErrors" type="ai" direction="out"/>
    </method>
    <signal name="ItemsPropertiesUpdated">
      <arg name="updatedProps" type="a(ia{{sv}})"/>
      <arg name="removedProps" type="a(ias)"/>
    </signal>
    <signal name="LayoutUpdated">
      <arg name="revision" type="u"/>
      <arg name="parent" type="i"/>
    </signal>
  </interface>
</node>
""",
}


def menu_entries(menu: tuple[MenuItem, ...]) -> list[tuple[int, dict[str, Variant], Action | None]]:
    """dbusmenu's children of the root (id 0): ids from 1, a separator an entry of its own."""
    entries: list[tuple[int, dict[str, Variant], Action | None]] = []
    for item in menu:
        if item.separator_before:
            entries.append((len(entries) + 1, {"type": Variant("s", "separator")}, None))
        props = {"label": Variant("s", item.label), "enabled": Variant("b", item.action is not None)}
        if item.checked is not None:
            props["toggle-type"] = Variant("s", "radio")
            props["toggle-state"] = Variant("i", 1 if item.checked else 0)
        entries.append((len(entries) + 1, props, item.action))
    return entries


class Indicator:
    """Owns org.kde.StatusNotifierItem-PID-1 on the session bus, registers with the watcher (again
    whenever a watcher appears: a panel restarted) and answers the host's reads and menu events."""

    def __init__(self, bus: Connection, choose: Callable[[Action], None]) -> None:
        self.bus = bus
        self.name = f"org.kde.StatusNotifierItem-{os.getpid()}-1"
        self.view = tray_view(None)
        self._choose = choose
        self._revision = 1
        self._entries = menu_entries(self.view.menu)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        await self.bus.call_bus("RequestName", "su", [self.name, REQUEST_NAME_DO_NOT_QUEUE])
        await self.bus.add_match(WATCHER_MATCH)
        await self._register()

    async def _register(self) -> None:
        try:
            await self.bus.call(*WATCHER, "RegisterStatusNotifierItem", "s", [self.name])
        except Exception as exc:  # noqa: BLE001 - no tray on this desktop (yet): the notices go on
            logger.info("no tray to show the indicator in ({}); waiting for one", exc)
            return
        logger.info("tray indicator registered as {}", self.name)

    def update(self, view: TrayView) -> None:
        if view == self.view:
            return
        old, self.view = self.view, view
        if view.icon != old.icon:
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewIcon")
        if (view.title, view.details) != (old.title, old.details):
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewTitle")
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewToolTip")
        if view.status != old.status:
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewStatus", "s", [view.status])
        if view.menu != old.menu:
            self._entries = menu_entries(view.menu)
            self._revision += 1
            self._signal(MENU_PATH, MENU_INTERFACE, "LayoutUpdated", "ui", [self._revision, 0])

    def _signal(
        self, path: str, interface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> None:
        self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )

    # -- what the host asks -------------------------------------------------------------------------

    def _item_properties(self) -> dict[str, Variant]:
        view = self.view
        return {
            "Category": Variant("s", "SystemServices"),
            "Id": Variant("s", "nmfailover"),
            "Title": Variant("s", view.title),
            "Status": Variant("s", view.status),
            "WindowId": Variant("i", 0),
            "IconName": Variant("s", view.icon),
            "IconPixmap": Variant("a(iiay)", []),
            "OverlayIconName": Variant("s", ""),
            "AttentionIconName": Variant("s", view.icon),
            "AttentionIconPixmap": Variant("a(iiay)", []),
            "ToolTip": Variant("(sa(iiay)ss)", [view.icon, [], view.title, view.details]),
            "ItemIsMenu": Variant("b", True),
            "Menu": Variant("o", MENU_PATH),
        }

    @staticmethod
    def _menu_properties() -> dict[str, Variant]:
        return {
            "Version": Variant("u", 3),
            "TextDirection": Variant("s", "ltr"),
            "Status": Variant("s", "normal"),
            "IconThemePath": Variant("as", []),
        }

    def _entry_properties(self, entry_id: int) -> dict[str, Variant] | None:
        if entry_id == 0:
            return {"children-display": Variant("s", "submenu")}
        return next((props for number, props, _ in self._entries if number == entry_id), None)

    def _layout(self) -> list[Any]:
        children = [Variant(_LAYOUT, [number, props, []]) for number, props, _ in self._entries]
        return [0, {"children-display": Variant("s", "submenu")}, children]

    def _clicked(self, entry_id: int) -> bool:
        action = next((a for number, _, a in self._entries if number == entry_id), None)
        if action is None:
            return False
        logger.info("tray menu: {}", action.label)
        self._choose(action)
        return True

    def _answer(self, msg: Any) -> Any:
        path, interface, member, body = msg.path, msg.interface, msg.member, msg.body
        if member == "Introspect" and interface in (None, IFACE_INTROSPECTABLE):
            return Message.new_method_return(msg, "s", [_INTROSPECTION[path]])
        properties = self._item_properties() if path == ITEM_PATH else self._menu_properties()
        if interface == IFACE_PROPERTIES and member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [properties])
        if interface == IFACE_PROPERTIES and member == "Get" and body[1] in properties:
            return Message.new_method_return(msg, "v", [properties[body[1]]])
        if path == ITEM_PATH and member in ("Activate", "SecondaryActivate", "ContextMenu", "Scroll"):
            return Message.new_method_return(msg)
        if path == MENU_PATH and member == "GetLayout":
            return Message.new_method_return(msg, f"u{_LAYOUT}", [self._revision, self._layout()])
        if path == MENU_PATH and member == "GetGroupProperties":
            ids = body[0] or [number for number, _, _ in self._entries]
            found = [[i, props] for i in ids if (props := self._entry_properties(i)) is not None]
            return Message.new_method_return(msg, "a(ia{sv})", [found])
        if path == MENU_PATH and member == "GetProperty":
            props = self._entry_properties(body[0]) or {}
            if body[1] in props:
                return Message.new_method_return(msg, "v", [props[body[1]]])
        if path == MENU_PATH and member == "Event":
            if body[1] == "clicked":
                self._clicked(body[0])
            return Message.new_method_return(msg)
        if path == MENU_PATH and member == "EventGroup":
            errors = [i for i, event, _, _ in body[0] if event == "clicked" and not self._clicked(i)]
            return Message.new_method_return(msg, "ai", [errors])
        if path == MENU_PATH and member == "AboutToShow":
            return Message.new_method_return(msg, "b", [False])
        if path == MENU_PATH and member == "AboutToShowGroup":
            return Message.new_method_return(msg, "aiai", [[], []])
        return Message.new_error(msg, ERROR_UNKNOWN_METHOD, f"no {interface}.{member}")

    def _on_message(self, msg: Any) -> bool:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == DBUS[0]
            and msg.body[0] == WATCHER[0]
            and msg.body[2]
        ):
            task = asyncio.ensure_future(self._register())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return False
        if msg.message_type != MessageType.METHOD_CALL or msg.path not in _INTROSPECTION:
            return False
        try:
            reply = self._answer(msg)
        except (IndexError, TypeError, KeyError) as exc:
            reply = Message.new_error(msg, ERROR_INVALID_ARGS, str(exc))
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.bus.send(reply)
        return True
