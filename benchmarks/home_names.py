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


# corpus_ml: the names its commands use, per clip, as a home would list them in Home Assistant
# (an entity, area or floor name in its own form: Polish, Romanian and Russian commands say them
# declined, "wyłącz Lampę główną" for the light "Lampa główna", and a transcript must keep what was
# said). Read off the references by hand; a clip not listed says no name of the home.
NAMES_ML = {
    "ca_001": ("Llum Dormitori",), "ca_003": ("Llum Dormitori",),
    "cs_004": ("Kuchyňský vypínač",), "cs_005": ("Předsíň",),
    "de_001": ("Partymodus",), "de_002": ("Lampe",), "de_003": ("Lampe",), "de_006": ("Garagentor",),
    "es_001": ("Cocina",), "es_003": ("Interruptor dormitorio",), "es_005": ("Puerta Principal",),
    "es_008": ("Humedad Exterior",), "es_015": ("Cocina",),
    "fr_001": ("Mode partie",), "fr_002": ("Ventilateur de plafond",), "fr_003": ("Bureau",), "fr_005": ("Bureau",),
    "fr_006": ("Nestor",), "fr_008": ("Bureau",), "fr_009": ("Bureau",), "fr_011": ("Premier Étage",),
    "fr_012": ("Rez-de-chaussée",), "fr_013": ("Rez-de-chaussée",), "fr_014": ("Premier Étage",),
    "fr_016": ("Chambre",), "fr_017": ("Chambre",), "fr_018": ("Mode partie",), "fr_023": ("Bureau",),
    "fr_024": ("Premier Étage",), "fr_025": ("Chambre",), "fr_026": ("Chambre",), "fr_027": ("Bureau",),
    "fr_028": ("Premier Étage",), "fr_030": ("Bureau",), "fr_031": ("Chambre",), "fr_034": ("TV",),
    "fr_036": ("Lumière du plafond",), "fr_037": ("Salon",), "fr_041": ("Rez-de-chaussée",), "fr_042": ("Salon",),
    "it_001": ("Lampada",), "it_002": ("Porta del Garage",), "it_005": ("Lampada",), "it_009": ("Ufficio",),
    "nl_002": ("Slaapkamerschakelaar", "Keuken"), "nl_006": ("Garagedeur",), "nl_007": ("Keuken",),
    "nl_008": ("Staande Lamp",), "nl_009": ("Staande Lamp",), "nl_011": ("Voordeur",), "nl_013": ("Garagedeur",),
    "nl_014": ("Garagedeur",), "nl_017": ("Keuken",), "nl_018": ("EcoBee",), "nl_020": ("Keuken",),
    "pl_006": ("Lampa główna",), "pl_007": ("Lampa główna",), "pl_008": ("Lampa główna",), "pl_009": ("Lampa główna",),
    "pt_PT_001": ("Luz do Quarto",), "pt_PT_002": ("Luz do Quarto",), "pt_PT_003": ("Luz do Quarto",),
    "pt_PT_005": ("Luz do Quarto",),
    "ro_001": ("Lustră",), "ro_004": ("Lustră",), "ro_007": ("Lustră",), "ro_008": ("Lustră",),
    "ru_004": ("Ночная лампа",), "ru_005": ("Ночная лампа",), "ru_008": ("Ночная лампа",),
}


def home_names_ml(language: str) -> tuple[str, ...]:
    """A home for corpus_ml's commands in ``language``: the names its commands use, then every
    other language's corpus names and OTHER_NAMES (a home whose devices were named in several
    languages, as many are; 150 names, all of them possible false insertions)."""
    own = [n for clip, names in NAMES_ML.items() if clip.startswith(language + "_") for n in names]
    rest = [n for names in NAMES_ML.values() for n in names] + list(OTHER_NAMES)
    return tuple(dict.fromkeys(own + rest))
