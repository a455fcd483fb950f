/* text-stats: counts characters, words and lines of the `text` argument.
 *
 * Request on stdin: {"tool": "stats", "arguments": {"text": "..."}}
 * Result on stdout: {"chars": N, "words": N, "lines": N}
 *
 * A deliberately small JSON reader: it finds the "text" member and decodes
 * its string (escapes included). Anything else is a tool error: a message on
 * stderr and exit status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char input[1 << 20];

static int fail(const char *msg) {
    fprintf(stderr, "%s\n", msg);
    return 1;
}

int main(void) {
    size_t len = fread(input, 1, sizeof input - 1, stdin);
    input[len] = 0;
    char *p = strstr(input, "\"text\"");
    if (!p) return fail("missing argument `text`");
    p += 6;
    while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n') p++;
    if (*p != '"') return fail("`text` must be a string");
    p++;
    long chars = 0, words = 0, lines = 0;
    int in_word = 0;
    for (; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            p++;
            if (!*p) break;
            if (*p == 'n') c = '\n';
            else if (*p == 't') c = '\t';
            else if (*p == 'u') { c = 'u'; p += 4; } /* counts as one char */
            else c = *p;
        } else if ((c & 0xC0) == 0x80) {
            continue; /* UTF-8 continuation byte: same character */
        }
        chars++;
        if (c == '\n') lines++;
        int space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
        if (!space && !in_word) words++;
        in_word = !space;
    }
    if (*p != '"') return fail("unterminated `text` string");
    if (chars > 0) lines++;
    printf("{\"chars\":%ld,\"words\":%ld,\"lines\":%ld}", chars, words, lines);
    return 0;
}
