"""Monte Carlo Pi over MPI (mpi4py): each rank counts the points of its slice
of the input file inside the quarter circle; the counts are reduced to rank
0, which prints {"pi", "points", "procs", "seconds"}.

Input: pairs of little-endian u32 (x, y), each divided by 2^32 to lie in
[0, 1). The executor names the file in COMFAAS_INPUT_FILE."""
import json
import os
import sys
from array import array

from mpi4py import MPI

POINT = 8
SCALE = 4294967296.0


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    started = MPI.Wtime()
    path = os.environ.get("COMFAAS_INPUT_FILE", "")
    nbytes = os.path.getsize(path) if path and os.path.exists(path) else 0
    if nbytes == 0 or nbytes % POINT:
        if rank == 0:
            print(f"input must be a non-empty set of points (8 bytes each), got {nbytes} bytes", file=sys.stderr)
        return 2
    points = nbytes // POINT
    first, last = points * rank // size, points * (rank + 1) // size
    values = array("I")
    with open(path, "rb") as f:
        f.seek(first * POINT)
        values.frombytes(f.read((last - first) * POINT))
    if sys.byteorder != "little":
        values.byteswap()
    xs, ys = values[0::2], values[1::2]
    local = sum(1 for x, y in zip(xs, ys) if (x / SCALE) ** 2 + (y / SCALE) ** 2 < 1.0)
    inside = comm.reduce(local, op=MPI.SUM, root=0)
    if rank == 0:
        print(json.dumps({"pi": round(4.0 * inside / points, 10), "points": points,
                          "procs": size, "seconds": round(MPI.Wtime() - started, 6)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
