#!/usr/bin/env python3
"""Verifies webhook deliveries with the Standard Webhooks reference verifier (the `standardwebhooks` package).

Input: JSON lines, from the file named as the only argument or from standard input, one delivery a line:

    {"secret": "whsec_...", "headers": {"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature": ...},
     "body": "<the raw body, exactly as received>"}

"secret" may be a list (or "secrets" used instead): the delivery must then verify with EACH listed secret, which is
how a rotation overlap (two signatures in one header) is checked. The reference verifier also checks the timestamp
against the clock (5 minutes either way), so lines must be fresh, as a receiver sees them.

Prints one line per failure and a summary ("verified N deliveries"); exits 0 only if every line verified, 1 if any
did not (or there was nothing to verify), 2 on unreadable input.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def secrets_of(entry):
    secrets = entry.get("secrets", entry.get("secret"))
    if isinstance(secrets, str):
        secrets = [secrets]
    if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) for s in secrets):
        raise ValueError('"secret" must be a string or a non-empty list of strings')
    return secrets


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip(), file=sys.stderr)
        print(f"\nusage: {argv[0]} [LINES.jsonl]   (standard input without an argument)", file=sys.stderr)
        return 2
    try:
        source = open(argv[1], encoding="utf-8") if len(argv) == 2 else sys.stdin
        with source:
            lines = [(n, line) for n, line in enumerate(source, 1) if line.strip()]
    except OSError as err:
        print(f"verify-webhooks: cannot read {argv[1]}: {err}", file=sys.stderr)
        return 2

    verified = failed = 0
    for n, line in lines:
        try:
            entry = json.loads(line)
            secrets = secrets_of(entry)
            headers = entry["headers"]
            body = entry["body"]
            if not isinstance(headers, dict) or not isinstance(body, str):
                raise ValueError('"headers" must be an object and "body" a string')
        except (ValueError, KeyError, TypeError) as err:
            print(f"line {n}: unreadable: {err}", file=sys.stderr)
            failed += 1
            continue
        problems = []
        for k, secret in enumerate(secrets, 1):
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except Exception as err:  # the verifier raises several kinds; every one is a failure here
                problems.append(f"secret {k} of {len(secrets)}: {type(err).__name__}: {err}")
        if problems:
            failed += 1
            msg_id = headers.get("webhook-id", "?")
            for problem in problems:
                print(f"line {n} (webhook-id {msg_id}): FAILED with {problem}", file=sys.stderr)
        else:
            verified += 1

    if failed:
        print(f"verified {verified} deliveries, {failed} FAILED (of {len(lines)})")
        return 1
    if not lines:
        print("verified 0 deliveries: the input has none")
        return 1
    print(f"verified {verified} deliveries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
