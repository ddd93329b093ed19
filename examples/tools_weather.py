"""Tools for examples/tool_dialogue.yaml: pure standard library, deterministic (a fixed table, no network).

tool_dialogue reads each public function's schema from its signature and docstring (without importing this
file) and runs the function in the sandbox when the model calls it. An unknown city raises, and the model
sees the error, as it would with a real service.
"""

from typing import Literal

CITIES = {
    "paris": {"temperature_c": 18.0, "condition": "cloudy", "humidity": 71, "aqi": 42},
    "beijing": {"temperature_c": 24.0, "condition": "sunny", "humidity": 35, "aqi": 88},
    "shanghai": {"temperature_c": 27.0, "condition": "rain", "humidity": 90, "aqi": 55},
    "new york": {"temperature_c": 21.0, "condition": "clear", "humidity": 50, "aqi": 37},
    "london": {"temperature_c": 15.0, "condition": "drizzle", "humidity": 82, "aqi": 30},
    "tokyo": {"temperature_c": 23.0, "condition": "windy", "humidity": 60, "aqi": 40},
}
ALIASES = {
    "北京": "beijing",
    "上海": "shanghai",
    "巴黎": "paris",
    "伦敦": "london",
    "东京": "tokyo",
    "纽约": "new york",
}


def _city(name: str) -> dict:
    key = ALIASES.get(name.strip(), name.strip().lower())
    if key not in CITIES:
        raise ValueError(f"unknown city {name!r}; known cities: {', '.join(sorted(CITIES))}")
    return CITIES[key]


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather in a city.

    Args:
        city: The city's name, e.g. Paris or 北京.
        unit: Temperature unit of the reply.
    """
    data = _city(city)
    temperature = data["temperature_c"] if unit == "celsius" else round(data["temperature_c"] * 9 / 5 + 32, 1)
    return {
        "city": city,
        "temperature": temperature,
        "unit": unit,
        "condition": data["condition"],
        "humidity_percent": data["humidity"],
    }


def get_air_quality(city: str) -> dict:
    """Air quality index (AQI, US scale) of a city, with its category.

    Args:
        city: The city's name, e.g. Tokyo or 上海.
    """
    aqi = _city(city)["aqi"]
    category = "good" if aqi <= 50 else "moderate" if aqi <= 100 else "unhealthy"
    return {"city": city, "aqi": aqi, "category": category}
