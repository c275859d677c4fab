"""hello: reads JSON from stdin, writes JSON to stdout."""
import json
import os
import sys


def main() -> int:
    raw = sys.stdin.read()
    try:
        request = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        print(f"input is not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(request, dict):
        print("input must be a JSON object", file=sys.stderr)
        return 2
    name = str(request.get("name", "world"))
    json.dump({"greeting": f"hello, {name}", "node": os.environ.get("COMFAAS_NODE")}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
