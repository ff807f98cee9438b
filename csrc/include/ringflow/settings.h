// The registry of every RINGFLOW_* setting the core reads.  Each module
// registers its own settings (name and help) with the function that reads,
// and so checks, them; nothing lists them anywhere else.  checkSettings()
// runs every reader when a communicator is built, so a malformed value fails
// there, on every rank that has it, not at the first call that happens to
// need it (on that rank alone, leaving its peers waiting for the timeout).
// Python reads the names and help through the binding (config.py).
#pragma once

#include <string>
#include <vector>

namespace ringflow {

struct SettingDoc {
  const char* name;  // RINGFLOW_...
  const char* help;  // what it does, and its default
};

// A module's settings, registered at static initialisation: define one
// `const SettingsRegistration` per module, in the file that reads them.
class SettingsRegistration {
 public:
  SettingsRegistration(std::vector<SettingDoc> docs, void (*read)());
};

// Runs every registered reader; throws InvalidArgument (env.h) naming the
// first bad setting.
void checkSettings();

// Every registered setting, sorted by name.
std::vector<SettingDoc> registeredSettings();

}  // namespace ringflow
