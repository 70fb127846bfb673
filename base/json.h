// json.h - a small streaming JSON writer for the diagnostics (safeconc_stats and friends).
// It handles commas and string escaping; callers must balance Begin/End. Not thread-safe:
// one writer per output.
#ifndef SAFECONC_BASE_JSON_H
#define SAFECONC_BASE_JSON_H

#include <cstdint>
#include <string>

namespace safeconc {

class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(const char* k);
  JsonWriter& String(const std::string& s);
  JsonWriter& Int(int64_t v);
  JsonWriter& Double(double v);  // non-finite values become null (JSON has no NaN)
  JsonWriter& Bool(bool v);
  JsonWriter& Null();
  // Shorthands for "key": value.
  JsonWriter& Field(const char* k, int64_t v) { return Key(k).Int(v); }
  JsonWriter& Field(const char* k, const std::string& v) { return Key(k).String(v); }

  const std::string& str() const { return out_; }

 private:
  void Separate();
  std::string out_;
  bool need_comma_ = false;
};

}  // namespace safeconc

#endif  // SAFECONC_BASE_JSON_H
