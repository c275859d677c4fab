"""sensor-stats: summary statistics and anomalies of a batch of readings.

Runs in handler mode: warm workers keep this module loaded and call
`handle(data)` per invocation.

Input (JSON): {"device": "...", "sensor": "...", "readings": [{"t": 0, "value": 21.3}, ...]}
or a bare list of numbers. Output (JSON): count, min, max, mean, stdev,
median, and the readings further than `z` standard deviations from the
median absolute deviation (robust to the anomalies themselves).
"""
import json
import statistics
import sys

Z = 3.5  # modified z-score threshold (Iglewicz and Hoaglin)


def values_of(batch):
    readings = batch.get("readings", []) if isinstance(batch, dict) else batch
    out = []
    for i, r in enumerate(readings):
        v = r.get("value") if isinstance(r, dict) else r
        t = r.get("t", i) if isinstance(r, dict) else i
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"reading {i} has no numeric value: {r!r}")
        out.append((t, float(v)))
    return out


def handle(data: bytes) -> dict:
    """Handler mode: called by a warm worker for each invocation."""
    try:
        batch = json.loads(data)
        points = values_of(batch)
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"invalid batch: {e}") from None
    if not points:
        raise ValueError("invalid batch: no readings")
    values = [v for _, v in points]
    median = statistics.median(values)
    mad = statistics.median([abs(v - median) for v in values])
    anomalies = []
    if mad > 0:
        for t, v in points:
            score = 0.6745 * (v - median) / mad
            if abs(score) > Z:
                anomalies.append({"t": t, "value": v, "score": round(score, 2)})
    result = {
        "device": batch.get("device") if isinstance(batch, dict) else None,
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 4),
        "stdev": round(statistics.pstdev(values), 4),
        "median": median,
        "anomalies": anomalies,
    }
    return result


if __name__ == "__main__":
    # Script mode, for trying it by hand: stdin in, stdout out.
    try:
        json.dump(handle(sys.stdin.buffer.read()), sys.stdout)
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
