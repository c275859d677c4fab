/* hello-c: echoes how many bytes it read, as JSON. */
#include <stdio.h>

int main(void) {
    char buf[4096];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    printf("{\"greeting\": \"hello from C\", \"bytes\": %zu}\n", total);
    return 0;
}
