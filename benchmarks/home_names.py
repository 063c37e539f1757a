"""A Home Assistant names list of realistic size for the names benchmarks and tests.

The names a corpus command uses are the capitalised runs of its reference
("set Bed Light brightness to 50 percent" -> "Bed Light"); a home also exposes
many names that no command says. ``OTHER_NAMES`` are ~100 such names, the kind
a typical home exposes to Assist (entities, areas, floors), several of them
close to the corpus's names on purpose ("Bedside Lamp", "Kitchen Island",
"Garage", "Front Porch") so that biasing has to choose, not just insert.
"""

from __future__ import annotations

import re

OTHER_NAMES = (
    # areas and floors
    "Living Room", "Dining Room", "Hallway", "Bathroom", "Master Bedroom", "Guest Room", "Nursery",
    "Laundry Room", "Basement", "Attic", "Garage", "Garden", "Patio", "Front Porch", "Back Yard",
    "Upstairs", "Downstairs", "Ground Floor", "First Floor", "Utility Room", "Pantry", "Study",
    "Kids Room", "Playroom", "Gym", "Workshop", "Driveway", "Balcony", "Sunroom", "Cellar",
    # lights
    "Ceiling Light", "Hallway Light", "Porch Light", "Desk Lamp", "Floor Lamp", "Bedside Lamp",
    "Reading Lamp", "Kitchen Island", "Under Cabinet Lights", "Pendant Lights", "Night Light",
    "Christmas Lights", "String Lights", "Mirror Light", "Vanity Light", "Spotlights", "Wall Sconce",
    "Path Lights", "Stair Lights", "Accent Light", "Lava Lamp", "Ambilight", "Nanoleaf", "Hue Go",
    # switches, plugs, fans, climate
    "Coffee Maker", "Kettle", "Dishwasher", "Washing Machine", "Dryer", "Space Heater", "Ceiling Fan",
    "Tower Fan", "Air Purifier", "Dehumidifier", "Humidifier", "Water Heater", "Thermostat",
    "Heat Pump", "Radiator", "Towel Warmer", "Aquarium", "Christmas Tree", "Printer", "Router",
    # covers, locks, sensors
    "Back Door", "Side Gate", "Patio Door", "Bedroom Blinds", "Living Room Curtains", "Skylight",
    "Garage Side Door", "Mailbox", "Doorbell", "Smoke Detector", "Water Leak Sensor", "Motion Sensor",
    "Indoor Temperature", "Outdoor Temperature", "Indoor Humidity", "Air Quality", "Power Usage",
    # media, scenes, scripts, lists
    "Soundbar", "Sonos", "Kitchen Speaker", "Apple TV", "Chromecast", "Bedroom TV", "Movie Night",
    "Good Morning", "Good Night", "Away Mode", "Dinner Time", "Relax", "Focus", "Grocery List",
    "To Do", "Vacuum", "Robot Mower",
)

_NAME = re.compile(r"[A-Z][\w']*(?: [A-Z][\w']*)*")


def names_in(reference: str) -> list[str]:
    """The capitalised runs of a corpus reference, leaving out its first word
    (sentence case, "Turn on the living room light.")."""
    first = reference.split(" ", 1)
    rest = first[1] if len(first) > 1 else ""
    found = _NAME.findall(rest)
    if first[0][:1].isupper() and len(first[0]) > 1 and first[0][1:].isupper():
        found.insert(0, first[0])  # an acronym first ("TV on") is still a name
    return found


def home_names(references: list[str]) -> tuple[str, ...]:
    """Every name the references use, then OTHER_NAMES: one home's list."""
    used: dict[str, None] = {}
    for ref in references:
        for name in names_in(ref):
            used.setdefault(name, None)
    return tuple(used) + tuple(n for n in OTHER_NAMES if n not in used)
