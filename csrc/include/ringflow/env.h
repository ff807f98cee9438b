// Reading RINGFLOW_* settings from the environment.  Unset or empty (or all
// blanks) means the default; anything else must be a well-formed value in
// range, or the read throws an InvalidArgument naming the variable, the value
// and what was expected.  atoll and strtod would quietly turn "12x" into 12
// and "abc" into 0, so a typo used to change behaviour without a word.
//
// Most settings are read once into a function-local static.  A throw there
// leaves the static uninitialised (the next call reads again), so it reaches
// the caller like any other error; a setting read on a thread with no caller
// to report to (a transport's progress thread) must be read on the thread
// that builds that object instead.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ringflow {

// A whole number in [lo, hi] (decimal digits, blanks around them allowed).
size_t envSize(const char* name, size_t fallback, size_t lo = 0, size_t hi = SIZE_MAX);

// Microseconds, at most an hour: longer is surely a typo, and far longer
// overflows the clock arithmetic of the waits these settings bound.
std::chrono::microseconds envMicros(const char* name, std::chrono::microseconds fallback);

// A finite number, as strtod reads it ("100", "2.5", "1e3", "-1").
double envDouble(const char* name, double fallback);

// 1, true, yes, on or 0, false, no, off, in any case.
bool envBool(const char* name, bool fallback);

// The text as it is.
std::string envString(const char* name, const std::string& fallback = "");

// The index of the value in `choices` (compared exactly, blanks around it aside).
size_t envChoice(const char* name, size_t fallback, const std::vector<const char*>& choices);

}  // namespace ringflow
