#include "ringflow/settings.h"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace ringflow {
namespace {

struct Registry {
  std::mutex mu;
  std::vector<SettingDoc> docs;
  std::vector<void (*)()> readers;
};

// A function-local static: registrations run during static initialisation,
// in whatever order the linker put the files.
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

SettingsRegistration::SettingsRegistration(std::vector<SettingDoc> docs, void (*read)()) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.docs.insert(r.docs.end(), docs.begin(), docs.end());
  r.readers.push_back(read);
}

void checkSettings() {
  std::vector<void (*)()> readers;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    readers = r.readers;
  }
  for (auto read : readers) read();
}

std::vector<SettingDoc> registeredSettings() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<SettingDoc> docs = r.docs;
  std::sort(docs.begin(), docs.end(),
            [](const SettingDoc& a, const SettingDoc& b) { return std::strcmp(a.name, b.name) < 0; });
  return docs;
}

}  // namespace ringflow
