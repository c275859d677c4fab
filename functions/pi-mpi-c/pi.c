/* Monte Carlo Pi over MPI: each rank counts the points of its slice of the
 * input file that fall inside the quarter circle; the counts are reduced to
 * rank 0, which prints {"pi", "points", "procs", "seconds"}.
 * Input: pairs of little-endian u32 (x, y), each divided by 2^32 to lie in
 * [0, 1). The executor names the file in COMFAAS_INPUT_FILE. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define POINT 8
#define CHUNK (1 << 20)

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double started = MPI_Wtime();
    const char *path = getenv("COMFAAS_INPUT_FILE");
    FILE *f = path ? fopen(path, "rb") : NULL;
    long long bytes = 0;
    if (f && fseek(f, 0, SEEK_END) == 0) bytes = ftell(f);
    if (!f || bytes <= 0 || bytes % POINT != 0) {
        if (rank == 0)
            fprintf(stderr, "input must be a non-empty set of points (8 bytes each), got %lld bytes\n", bytes);
        MPI_Finalize();
        return 2;
    }
    unsigned long long points = (unsigned long long)bytes / POINT;
    unsigned long long first = points * rank / size, last = points * (rank + 1) / size;
    unsigned long long left = (last - first) * POINT, local = 0, inside = 0;
    unsigned char *buf = malloc(CHUNK);
    if (!buf || fseek(f, (long)(first * POINT), SEEK_SET) != 0) {
        fprintf(stderr, "rank %d: cannot read %s\n", rank, path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    while (left > 0) {
        size_t want = left < CHUNK ? (size_t)left : CHUNK;
        if (fread(buf, 1, want, f) != want) {
            fprintf(stderr, "rank %d: short read of %s\n", rank, path);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        for (size_t i = 0; i < want; i += POINT) {
            double x = le32(buf + i) / 4294967296.0, y = le32(buf + i + 4) / 4294967296.0;
            local += (x * x + y * y < 1.0); /* branchless: the test is a coin flip */
        }
        left -= want;
    }
    free(buf);
    fclose(f);
    MPI_Reduce(&local, &inside, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("{\"pi\": %.10f, \"points\": %llu, \"procs\": %d, \"seconds\": %.6f}\n",
               4.0 * (double)inside / (double)points, points, size, MPI_Wtime() - started);
    MPI_Finalize();
    return 0;
}
