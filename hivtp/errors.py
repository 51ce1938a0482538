"""Errors the harness raises on bad input.

Every error says what was wrong *and what to do about it*. They subclass the built-in exception a
caller would naturally catch (``ValueError`` for bad values, ``TypeError`` for a wrong model kind,
``FileNotFoundError`` for missing artefacts), so generic handlers keep working.
"""

from __future__ import annotations


class HivtpError(Exception):
    """Base class of every error raised by this package."""


class ConfigError(HivtpError, ValueError):
    """A method parameter, a geometry or a budget that cannot work."""


class UnknownMethodError(ConfigError, KeyError):
    """A method name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(HivtpError, TypeError):
    """A model that is not a LLaVA / LLaVA-NeXT the adapters know."""


class InputMismatchError(HivtpError, ValueError):
    """Model inputs that do not agree with each other (e.g. image tokens vs images)."""


class MissingArtifactError(HivtpError, FileNotFoundError):
    """An offline artefact (checkpoint, dataset) that has not been built yet."""


class DeviceError(HivtpError, RuntimeError):
    """A device request that this machine cannot serve (e.g. CUDA without a GPU)."""
