#include "trainer/checkpoint/integrity.h"

#include <xxhash.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace rt {

std::string digest_hex(const void* data, size_t bytes) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(data, bytes)));
  return buf;
}

std::string IntegrityRecord::to_json() const {
  nlohmann::json ds = nlohmann::json::object();
  for (const auto& [name, d] : datasets) ds[name] = {{"shape", d.shape}, {"digest", d.digest}};
  nlohmann::json attrs = {{"format", format},
                          {"format_version", format_version},
                          {"step", step},
                          {"tokens_seen", tokens_seen},
                          {"config", config},
                          {"optimizer_type", optimizer_type},
                          {"optimizer_step", optimizer_step ? nlohmann::json(*optimizer_step)
                                                            : nlohmann::json(nullptr)},
                          {"trainer_state", trainer_state}};
  nlohmann::json j = {{"version", kIntegrityVersion},
                      {"hash", "xxh3_64"},
                      {"attributes", attrs},
                      {"datasets", ds}};
  return j.dump();
}

IntegrityRecord IntegrityRecord::from_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw std::runtime_error("not valid JSON");
  try {
    if (j.at("version").get<int>() != kIntegrityVersion)
      throw std::runtime_error("unknown version " + j.at("version").dump());
    if (j.at("hash").get<std::string>() != "xxh3_64")
      throw std::runtime_error("unknown hash " + j.at("hash").dump());
    IntegrityRecord r;
    const nlohmann::json& a = j.at("attributes");
    r.format = a.at("format").get<std::string>();
    r.format_version = a.at("format_version").get<int64_t>();
    r.step = a.at("step").get<int64_t>();
    r.tokens_seen = a.at("tokens_seen").get<int64_t>();
    r.config = a.at("config").get<std::string>();
    r.optimizer_type = a.at("optimizer_type").get<std::string>();
    if (!a.at("optimizer_step").is_null()) r.optimizer_step = a.at("optimizer_step").get<int64_t>();
    r.trainer_state = a.at("trainer_state").get<std::string>();
    for (const auto& [name, d] : j.at("datasets").items()) {
      IntegrityDataset x;
      x.shape = d.at("shape").get<std::vector<int64_t>>();
      x.digest = d.at("digest").get<std::string>();
      r.datasets[name] = x;
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("malformed: ") + e.what());
  }
}

}  // namespace rt
