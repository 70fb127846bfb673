// params.cc - a statement's parameters as better-sqlite3 takes them: values and arrays of
// values fill the anonymous parameters in order; one plain object gives the named ones
// (@a :a $a read key "a"); bind() fixes them for good. JS thread; the values are copied
// (Val), so an async job binds them on the pool.
#include "common.h"

namespace scnode {

namespace {

bool IsPlainObject(napi_env env, napi_value v) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_object) return false;
  bool is = false;
  if ((napi_is_array(env, v, &is) == napi_ok && is) ||
      (napi_is_buffer(env, v, &is) == napi_ok && is) ||
      (napi_is_typedarray(env, v, &is) == napi_ok && is)) {
    return false;
  }
  return true;
}

}  // namespace

bool ResolveParams(napi_env env, Stmt* s, napi_value args, std::vector<Val>* out) {
  uint32_t argc = 0;
  napi_get_array_length(env, args, &argc);
  std::vector<napi_value> positional;
  napi_value named = nullptr;
  for (uint32_t i = 0; i < argc; ++i) {
    napi_value a;
    napi_get_element(env, args, i, &a);
    bool is_array = false;
    napi_is_array(env, a, &is_array);
    if (is_array) {
      uint32_t n = 0;
      napi_get_array_length(env, a, &n);
      for (uint32_t k = 0; k < n; ++k) {
        napi_value e;
        napi_get_element(env, a, k, &e);
        positional.push_back(e);
      }
    } else if (IsPlainObject(env, a)) {
      if (named) {
        ThrowType(env, "You cannot specify named parameters in two different objects");
        return false;
      }
      named = a;
    } else {
      positional.push_back(a);
    }
  }
  const int count = sqlite3_bind_parameter_count(s->st);
  out->assign(static_cast<size_t>(count), Val());
  size_t next = 0;
  bool has_named = false;
  for (int i = 1; i <= count; ++i) {
    const char* name = sqlite3_bind_parameter_name(s->st, i);
    napi_value v;
    std::string label;
    if (name == nullptr || name[0] == '?') {
      if (next >= positional.size()) {
        ThrowRange(env, "Too few parameter values were provided");
        return false;
      }
      v = positional[next++];
      label = "parameter " + std::to_string(i);
    } else {
      has_named = true;
      bool has = false;
      if (named) napi_has_named_property(env, named, name + 1, &has);
      if (!has) {
        ThrowRange(env, std::string("Missing named parameter \"") + (name + 1) + "\"");
        return false;
      }
      napi_get_named_property(env, named, name + 1, &v);
      label = std::string("parameter ") + name;
    }
    std::string why;
    if (!ToVal(env, v, &(*out)[static_cast<size_t>(i) - 1], &why)) {
      ThrowType(env, label + " cannot be bound: " + why);
      return false;
    }
  }
  if (next < positional.size()) {
    ThrowRange(env, "Too many parameter values were provided");
    return false;
  }
  if (named && !has_named) {
    ThrowType(env, "This statement has no named parameters, but an object of them was given");
    return false;
  }
  return true;
}

// The parameters of one execution: given now, or bound for good by bind().
bool Params(napi_env env, Stmt* s, napi_value args, std::vector<Val>* out) {
  if (s->has_bound) {
    uint32_t n = 0;
    napi_get_array_length(env, args, &n);
    if (n > 0) {
      ThrowType(env, "This statement already has bound parameters");
      return false;
    }
    *out = s->bound;
    return true;
  }
  return ResolveParams(env, s, args, out);
}

}  // namespace scnode
