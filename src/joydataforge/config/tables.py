"""Settings that users write in more than one shape: names as a list or a ``name -> text`` mapping, one name
or a list of names.

Label sets (``labels: [BMI, 药品, 其他]`` or ``labels: {BMI: 询问身高体重...}``) and rewrite types are such
settings: the names are what the model must choose from, the texts are the guidance it is shown. A name
given without a text takes the built-in one when there is one. Config validators call
:func:`named_table` so that a setting of the wrong shape is reported against that setting.
"""

from __future__ import annotations

from typing import Any

from .messages import SettingError, shown


def named_table(value: Any, defaults: dict[str, str], setting: str, meaning: str) -> dict[str, str]:
    """``value`` (a list of names, a mapping ``name -> text`` or ``None``) as one ``name -> text`` mapping.

    Names given as a list take their text from ``defaults`` (empty when unknown); ``None`` means all the
    defaults; a mapping's keys and texts are taken as text (an empty text stays empty). Anything else
    raises :class:`SettingError` against ``setting``, saying it wants names or ``name -> <meaning>``.
    """
    if value is None:
        return dict(defaults)
    if isinstance(value, dict):
        return {str(k): str(v or "") for k, v in value.items()}
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return {x: defaults.get(x, "") for x in value}
    raise SettingError(setting, f"must be a list of names or a mapping name -> {meaning} (got {shown(value)})")


def one_or_more_names(value: Any, setting: str) -> Any:
    """A setting that takes one name or a list of names (``fields: input``), as a list.

    For a ``mode="before"`` validator of a field typed ``str | list[str]`` (so that the JSON Schema admits
    both forms): a string becomes a one-item list, a list (or tuple) of strings a list, anything else
    raises :class:`SettingError` against ``setting``, one message for both forms.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return list(value)
    raise SettingError(setting, f"must be a name or a list of names (got {shown(value)})")


def written_field_names(fields: list[str], setting: str, reserved: frozenset[str] | set[str], noun: str) -> list[str]:
    """The record fields a step writes (``fields`` of ``rewrite`` and ``seedless``), checked: at least one, none
    private (``_meta``) and none of the ``reserved`` fields the step sets itself. For an ``after`` validator of a
    setting that :func:`one_or_more_names` made a list; ``noun`` says what the names are in the message."""
    if not fields or not all(name and not name.startswith("_") for name in fields):
        raise SettingError(setting, f"must be one or more {noun}, none starting with '_' (got {shown(fields)})")
    clash = set(reserved) & set(fields)
    if clash:
        raise SettingError(setting, f"cannot include {shown(sorted(clash))} (the step sets them)")
    return fields
