/* Occupies one slot of a node for the milliseconds read from stdin: the
 * placement benchmark's background load. */
#include <stdio.h>
#include <time.h>

int main(void) {
    long ms = 1000;
    if (scanf("%ld", &ms) != 1 || ms < 0) ms = 1000;
    struct timespec nap = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&nap, NULL);
    printf("{\"slept_ms\":%ld}\n", ms);
    return 0;
}
