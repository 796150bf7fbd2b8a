"""Loading the three handlers by file path (unique module names) and a Lambda context for tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def load_function(name: str) -> ModuleType:
    """``functions/<name>/app.py`` as module ``<name>_app`` (each file loaded once per test session)."""
    module_name = f"{name}_app"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec is not None
    assert spec.loader is not None
    if module_name in sys.modules:
        return sys.modules[module_name]
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as an import would: dataclasses look their module up by name.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_event(file_name: str) -> dict[str, Any]:
    """One of the shared ``events/`` files."""
    event: dict[str, Any] = json.loads((EVENTS / file_name).read_text())
    return event


@dataclass
class FakeLambdaContext:
    """The attributes Powertools and the handlers read from Lambda's context."""

    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    remaining_ms: list[int] = field(default_factory=lambda: [300_000])

    def get_remaining_time_in_millis(self) -> int:
        """Pops the next programmed value; the last one repeats."""
        if len(self.remaining_ms) > 1:
            return self.remaining_ms.pop(0)
        return self.remaining_ms[0]
