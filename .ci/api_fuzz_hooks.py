"""Schemathesis hooks of .ci/api-fuzz: a check that no response carries another user's data."""

import json
import os

import schemathesis

FORBIDDEN = json.loads(os.environ.get("FORBIDDEN", "[]"))


@schemathesis.check
def no_other_users_data(ctx, response, case):
    """Fails if the response carries the other user's marker (in their run's input, their
    thread's messages and preview, their run record)."""
    body = response.content.decode("utf-8", "replace")
    for needle in FORBIDDEN:
        if needle in body:
            raise AssertionError(f"the response carries another user's data ({needle!r})")
