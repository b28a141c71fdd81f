"""Schemathesis hooks for tests/test_fuzz.py (loaded by the CLI through SCHEMATHESIS_HOOKS).

The fuzzer runs as tenant A. Of the ids it puts in paths, a third are replaced with another tenant's
(B's) real ids, read from WABOT_FUZZ_FOREIGN (JSON: parameter name -> id), and a check fails any
successful response that carries anything of B's (its ids, and its bot's name). Another third are
replaced with A's own real ids (WABOT_FUZZ_OWN), so operations on a conversation or an outbox row —
whose ids no response of the document's links hands out — reach their logic instead of a 404."""

from __future__ import annotations

import json
import os
import zlib

import schemathesis

FOREIGN: dict[str, str] = json.loads(os.environ.get("WABOT_FUZZ_FOREIGN", "{}"))
OWN: dict[str, str] = json.loads(os.environ.get("WABOT_FUZZ_OWN", "{}"))
MARKERS = [value for value in FOREIGN.values() if value]


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):  # the hook's signature
    if not path_parameters:
        return path_parameters
    for name, value in list(path_parameters.items()):
        # Deterministic for a given value (the run has a fixed seed): a third B's, a third A's own.
        third = zlib.crc32(str(value).encode()) % 3
        if third == 1 and name in FOREIGN:
            path_parameters[name] = FOREIGN[name]
        elif third == 2 and name in OWN:
            path_parameters[name] = OWN[name]
    return path_parameters


@schemathesis.check
def no_other_tenants_data(ctx, response, case):  # the check's signature
    if response.status_code >= 300:
        return
    body = response.content  # bytes: a media download is not text
    leaked = [marker for marker in MARKERS if marker.encode() in body]
    if leaked:
        raise AssertionError(f"a response to tenant A carries tenant B's data: {leaked}")
    return
