"""A handler's Powertools Logger and Metrics, with every log line of the function going through them.

The layer logs with the standard library (``logging.getLogger(__name__)``, keys in ``extra``). A handler
calls ``observability()`` once: the layer's and the drivers' loggers then write through its Powertools
logger, so their lines are JSON and carry its keys (correlation id, user id).
"""

from __future__ import annotations

import logging
import os
from typing import Final

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

DEFAULT_NAMESPACE: Final = "BytemarkTicketCache"
"""Metrics namespace when POWERTOOLS_METRICS_NAMESPACE is not set (local runs, tests)."""

LAYER_LOGGER: Final = "bytemark_cache"
LIBRARY_LOGGERS: Final = (
    "urllib3",
    "requests",
    "botocore",
    "boto3",
    "s3transfer",
    "pymongo",
    "pymysql",
    "py.warnings",
)
"""Driver loggers (and Python's warnings, captured into logging), kept at WARNING: their INFO lines are noise,
their warnings matter."""


def route_logs_to(logger: Logger) -> None:
    """Send the layer's (at the logger's level) and the libraries' (at WARNING) records through ``logger``."""
    # warnings.warn() would print plain text on stderr; as a log record it is JSON like every other line.
    logging.captureWarnings(True)
    for name in (LAYER_LOGGER, *LIBRARY_LOGGERS):
        logging.getLogger(name)  # registered now, so the copy below finds them
    copy_config_to_registered_loggers(source_logger=logger, include={LAYER_LOGGER})
    copy_config_to_registered_loggers(source_logger=logger, log_level="WARNING", include=set(LIBRARY_LOGGERS))


def observability() -> tuple[Logger, Metrics]:
    """The handler's logger (every log line of the function routed through it) and its metrics."""
    # "name" (the logging.Logger's name: the layer module, or the service) survives clear_state, so every
    # line says where it came from.
    logger = Logger(name="%(name)s")
    route_logs_to(logger)
    metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE)
    return logger, metrics
