#include "ringflow/env.h"

#include <strings.h>

#include <cmath>
#include <cstdlib>

#include "ringflow/types.h"

namespace ringflow {
namespace {

constexpr const char* kBlanks = " \t\r\n";

// The value without surrounding blanks; empty when unset.
std::string valueOf(const char* name) {
  const char* v = std::getenv(name);
  std::string s = v ? v : "";
  size_t first = s.find_first_not_of(kBlanks);
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(kBlanks) - first + 1);
}

[[noreturn]] void malformed(const char* name, const std::string& value,
                            const std::string& expected) {
  throw InvalidArgument(std::string(name) + "='" + value + "' is not " + expected);
}

}  // namespace

size_t envSize(const char* name, size_t fallback, size_t lo, size_t hi) {
  std::string v = valueOf(name);
  if (v.empty()) return fallback;
  const std::string range = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  const std::string expected = lo == 0 && hi == SIZE_MAX ? "a non-negative integer" : range;
  size_t x = 0;
  for (char ch : v) {
    if (ch < '0' || ch > '9') malformed(name, v, expected);
    size_t digit = size_t(ch - '0');
    if (x > (SIZE_MAX - digit) / 10) malformed(name, v, range);
    x = x * 10 + digit;
  }
  if (x < lo || x > hi) malformed(name, v, range);
  return x;
}

std::chrono::microseconds envMicros(const char* name, std::chrono::microseconds fallback) {
  constexpr size_t kHourUs = size_t(3600) * 1000 * 1000;
  return std::chrono::microseconds(envSize(name, size_t(fallback.count()), 0, kHourUs));
}

double envDouble(const char* name, double fallback) {
  std::string v = valueOf(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (*end || !std::isfinite(x)) malformed(name, v, "a finite number");
  return x;
}

bool envBool(const char* name, bool fallback) {
  std::string v = valueOf(name);
  if (v.empty()) return fallback;
  for (const char* yes : {"1", "true", "yes", "on"})
    if (!strcasecmp(v.c_str(), yes)) return true;
  for (const char* no : {"0", "false", "no", "off"})
    if (!strcasecmp(v.c_str(), no)) return false;
  malformed(name, v, "a boolean (1, true, yes, on or 0, false, no, off)");
}

std::string envString(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

size_t envChoice(const char* name, size_t fallback, const std::vector<const char*>& choices) {
  std::string v = valueOf(name);
  if (v.empty()) return fallback;
  std::string names;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (v == choices[i]) return i;
    names += (i ? ", " : "") + std::string(choices[i]);
  }
  malformed(name, v, "one of " + names);
}

}  // namespace ringflow
