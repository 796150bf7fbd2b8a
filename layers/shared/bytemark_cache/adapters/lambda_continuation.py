"""LambdaContinuation: re-invoke the back-fill function asynchronously with the cursor it reached."""

from __future__ import annotations

import json
from typing import Any

from bytemark_cache.errors import StoreError


class LambdaContinuation:
    """Continuation through Lambda's Invoke API (``InvocationType=Event``).

    Honours ``AWS_ENDPOINT_URL_LAMBDA``/``AWS_ENDPOINT_URL`` (boto3's own settings), so the local stack can
    point it at its emulator front.
    """

    def __init__(self, function_name: str, *, client: Any = None) -> None:
        self._function_name = function_name
        self._client = client

    def continue_backfill(self, request: dict[str, Any]) -> None:
        """Invoke the function again with ``request``; failures become StoreError."""
        if self._client is None:
            import boto3

            self._client = boto3.client("lambda")
        try:
            answer = self._client.invoke(
                FunctionName=self._function_name,
                InvocationType="Event",
                Payload=json.dumps(request).encode(),
            )
        except Exception as exc:
            raise StoreError(f"cannot hand the back-fill on ({type(exc).__name__})") from exc
        if answer.get("StatusCode") != 202:
            raise StoreError(f"back-fill continuation refused (status {answer.get('StatusCode')})")
