"""The paper's job (ComFaaS 2024, Tables 1 and 2): a Monte Carlo Pi reduction
over MPI, for `comfaas-bench-paper`.

Rank 0 reads the input (the data that had to reach the site) and checksums it
(CRC-32);
then every rank counts, for real, the points of its blocks (each block has its
own seeded generator, so the count is the same whatever the number of ranks and
the benchmark can check it exactly); the counts are reduced at rank 0.

This machine is not the paper's (2 cores, not an 8-core/16-thread cloud host or
a 4-core edge), so the compute time of a site is a profile: `profile.json`,
written by the benchmark into this bundle, gives per node the compute seconds
per process count (fitted from the paper's tables) and a fixed per-site delay
(fitted too; 0 unless the link profile says otherwise). Each rank does its real
share, then waits out the rest of its profiled time; the output says how much
was computed and how much waited, so nothing profiled passes for measured.

Output (rank 0, stdout, JSON): pi, inside, points, procs, node, input_bytes,
crc32, site_delay_s, read_s, compute_s (profiled), computed_s (the slowest
rank's real counting), waited_s, over_s (how far the real part overran the
profile), elapsed_s (from this process's start to the reduce)."""
import json
import os
import sys
import time
import zlib

from mpi4py import MPI

# A 32-bit linear congruential generator (Numerical Recipes' constants); the
# benchmark runs the same one in Rust to know the exact count.
A, C, MASK = 1664525, 1013904223, 0xFFFFFFFF
LIMIT = 1 << 64


def count_block(seed: int, points: int) -> int:
    x = seed & MASK
    inside = 0
    for _ in range(points):
        x = (A * x + C) & MASK
        a = x
        x = (A * x + C) & MASK
        if a * a + x * x < LIMIT:
            inside += 1
    return inside


def block_seed(block: int) -> int:
    return (block * 2654435761 + 12345) & MASK


def fail(rank: int, message: str) -> int:
    if rank == 0:
        print(f"paper-pi: {message}", file=sys.stderr)
    return 2


def load_profile(node: str, size: int):
    path = os.path.join(os.environ.get("COMFAAS_BUNDLE_DIR", "."), "profile.json")
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
        blocks, per_block = int(profile["blocks"]), int(profile["points_per_block"])
        nodes = profile["nodes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the profile {path}: {e}") from e
    site = nodes.get(node)
    if not isinstance(site, dict):
        raise ValueError(f"the profile has no entry for node `{node}` (it has {sorted(nodes)})")
    compute = site.get("compute_s", {}).get(str(size))
    if not isinstance(compute, (int, float)) or compute < 0:
        raise ValueError(f"the profile of `{node}` has no compute time for {size} processes")
    delay = site.get("site_delay_s", 0)
    if not isinstance(delay, (int, float)) or delay < 0:
        raise ValueError(f"the profile of `{node}` has a bad site_delay_s: {delay!r}")
    if blocks < 1 or per_block < 0:
        raise ValueError("blocks must be at least 1 and points_per_block at least 0")
    return blocks, per_block, float(compute), float(delay)


def main() -> int:
    started = time.monotonic()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = os.environ.get("COMFAAS_NODE", "")
    try:
        blocks, per_block, compute_s, delay_s = load_profile(node, size)
    except ValueError as e:
        return fail(rank, str(e))

    # The fixed per-site part the link profile fitted (0 if none): waited.
    if delay_s > 0:
        time.sleep(delay_s)

    read_started = time.monotonic()
    # A CRC-32 (zlib's, several times faster than SHA-256): the node has
    # already checked the input's SHA-256 as it fetched it; this checks that
    # the job read all of it, and costs the run little.
    input_bytes, crc = 0, 0
    if rank == 0:
        path = os.environ.get("COMFAAS_INPUT_FILE")
        try:
            with open(path, "rb") if path else sys.stdin.buffer as f:
                while chunk := f.read(1 << 20):
                    input_bytes += len(chunk)
                    crc = zlib.crc32(chunk, crc)
        except OSError as e:
            print(f"paper-pi: cannot read the input: {e}", file=sys.stderr)
            comm.Abort(2)
    read_s = time.monotonic() - read_started
    # Everyone starts computing once the input is read, as in the paper.
    comm.Barrier()

    compute_started = time.monotonic()
    inside = sum(count_block(block_seed(b), per_block) for b in range(rank, blocks, size))
    computed = time.monotonic() - compute_started
    rest = compute_s - computed
    if rest > 0:
        time.sleep(rest)
    total = comm.reduce(inside, op=MPI.SUM, root=0)
    slowest = comm.reduce(computed, op=MPI.MAX, root=0)
    if rank == 0:
        points = blocks * per_block
        print(json.dumps({
            "pi": 4.0 * total / points if points else 0.0,
            "inside": total,
            "points": points,
            "procs": size,
            "node": node,
            "input_bytes": input_bytes,
            "crc32": crc,
            "site_delay_s": delay_s,
            "read_s": round(read_s, 6),
            "compute_s": compute_s,
            "computed_s": round(slowest, 6),
            "waited_s": round(max(compute_s - slowest, 0.0), 6),
            "over_s": round(max(slowest - compute_s, 0.0), 6),
            "elapsed_s": round(time.monotonic() - started, 6),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
