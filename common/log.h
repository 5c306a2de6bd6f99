// Minimal logging: rank-0-only info lines and warnings, to stderr (stdout is
// for results: tables, JSON, generated text). Errors are printed by main() on
// the rank that raised them.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>

namespace rt {

// The process's rank; set once by the parallel layer. Only rank 0 prints info
// and warnings (under mpirun every rank meets the same conditions).
void set_log_rank(int rank);
int log_rank();

void log_info(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// "412.0 MiB"
std::string format_bytes(double bytes);

// Peak resident set size of this process in bytes (VmHWM).
long long peak_rss_bytes();

}  // namespace rt
