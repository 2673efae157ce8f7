"""What the preprocessing commands share: their log format, and configs built from parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    C = TypeVar("C", bound=DataclassInstance)
else:
    C = TypeVar("C")

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """``cls`` with every field taken from the flag of the same name.

    A field without a flag is an AttributeError here, at once: no option can be parsed and then
    forgotten on its way into the config.
    """
    values: dict[str, Any] = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    return cls(**values)
