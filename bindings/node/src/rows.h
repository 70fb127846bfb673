// rows.h - a result row as JS sees it: an object keyed by column name (the default), an
// array (raw), the first column's value (pluck), or objects per table (expand: expressions
// under "$"). Shared by the sync path (values read from the statement) and the async twins
// (values copied on the pool thread).
#ifndef SAFECONC_NODE_ROWS_H
#define SAFECONC_NODE_ROWS_H

#include <string>
#include <vector>

#include "common.h"

namespace scnode {

class RowShape {
 public:
  RowShape(napi_env env, int flags, const std::vector<std::string>& names,
           const std::vector<std::string>& tables)
      : env_(env), flags_(flags), keys_(names.size()), tables_(tables) {
    for (size_t c = 0; c < names.size(); ++c) {
      napi_create_string_utf8(env, names[c].data(), names[c].size(), &keys_[c]);
    }
  }

  // get(c) returns column c's value.
  template <typename Get>
  napi_value Build(size_t ncol, Get get) const {
    napi_value out = nullptr;
    if (flags_ & kPluck) {
      if (ncol > 0) return get(0);
      napi_get_undefined(env_, &out);
      return out;
    }
    if (flags_ & kRaw) {
      napi_create_array_with_length(env_, ncol, &out);
      for (size_t c = 0; c < ncol; ++c)
        napi_set_element(env_, out, static_cast<uint32_t>(c), get(c));
      return out;
    }
    napi_create_object(env_, &out);
    if (flags_ & kExpand) {
      for (size_t c = 0; c < ncol; ++c) {
        const char* t = c < tables_.size() ? tables_[c].c_str() : "$";
        napi_value sub;
        bool has = false;
        napi_has_named_property(env_, out, t, &has);
        if (has) {
          napi_get_named_property(env_, out, t, &sub);
        } else {
          napi_create_object(env_, &sub);
          napi_set_named_property(env_, out, t, sub);
        }
        napi_set_property(env_, sub, keys_[c], get(c));
      }
      return out;
    }
    for (size_t c = 0; c < ncol; ++c) napi_set_property(env_, out, keys_[c], get(c));
    return out;
  }

 private:
  napi_env env_;
  int flags_;
  std::vector<napi_value> keys_;
  const std::vector<std::string>& tables_;
};

}  // namespace scnode

#endif  // SAFECONC_NODE_ROWS_H
