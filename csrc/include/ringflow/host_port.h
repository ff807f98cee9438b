// Splitting "host:port" and "[v6]:port", for the TCP mesh and the
// aggregator's UDP endpoints alike; each caller words its own error.
#pragma once

#include <string>

namespace ringflow {

// Splits at the port's colon: the one right after "]" when the address
// starts with "[" (the brackets are dropped from *host), else the last one,
// so an unbracketed "::1:80" still reads as host "::1", port "80".  False
// when there is no port: no colon, nothing after it, or no "]:" after "[".
inline bool splitHostPort(const std::string& addr, std::string* host, std::string* port) {
  size_t colon;
  if (!addr.empty() && addr.front() == '[') {
    size_t close = addr.find(']');
    if (close == std::string::npos || close + 1 >= addr.size() || addr[close + 1] != ':')
      return false;
    *host = addr.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = addr.rfind(':');
    if (colon == std::string::npos) return false;
    *host = addr.substr(0, colon);
  }
  *port = addr.substr(colon + 1);
  return !port->empty();
}

}  // namespace ringflow
