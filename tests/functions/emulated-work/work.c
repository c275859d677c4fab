/* The placement benchmark's job, in the shape of the paper's Pi reduction:
 * rank 0 reads the whole input (the data that had to reach the site), then
 * every rank does its share of the work, a fixed part plus a part that
 * grows with the input, and the shares are reduced at rank 0.
 *
 * The part that grows with the input is this benchmark's choice, so that
 * placement has run times that depend on input size to learn: the paper's
 * own work does not grow with its input (its Table 2 less Table 1 is the
 * same at every process count, so the 500 MB cost it transfer, not compute;
 * `comfaas-bench-paper` reproduces that job, tests/functions/paper-pi).
 *
 * The work is emulated: each rank sleeps
 * (WORK_MS + WORK_MS_PER_MB x input MB) / ranks. One 2-core
 * machine cannot give each emulated site its own 4 or 16 cores, so real
 * compute would measure the benchmark machine, not the placement. The MPI
 * launch of N processes, the input fetch and everything else are real. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORK_MS 3200L
#define WORK_MS_PER_MB 100L

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    unsigned long long bytes = 0, sum = 0;
    if (rank == 0) {
        const char *path = getenv("COMFAAS_INPUT_FILE");
        FILE *in = path ? fopen(path, "rb") : stdin;
        if (!in) {
            fprintf(stderr, "cannot open the input %s\n", path);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        static unsigned char buf[1 << 16];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
            bytes += n;
            for (size_t i = 0; i < n; i++) sum += buf[i];
        }
    }

    MPI_Bcast(&bytes, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    long share_ms = (WORK_MS + (long)(bytes * WORK_MS_PER_MB / 1000000ULL)) / size;
    struct timespec nap = {share_ms / 1000, (share_ms % 1000) * 1000000L};
    nanosleep(&nap, NULL);
    long done = share_ms, total = 0;
    MPI_Reduce(&done, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);

    if (rank == 0)
        printf("{\"procs\":%d,\"input_bytes\":%llu,\"checksum\":%llu,\"work_ms\":%ld}\n",
               size, bytes, sum, total);
    MPI_Finalize();
    return 0;
}
