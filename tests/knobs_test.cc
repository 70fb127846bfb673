// knobs_test.cc - unit tests of knob parsing and the JSON writer (internals, no VFS).
#include <limits>
#include <string>

#include "base/json.h"
#include "tests/test_util.h"
#include "vfs/knobs.h"

namespace safeconc {
namespace {

const char* kMillisAccepted = "an integer number of milliseconds from 0 to 86400000";
const char* kTxnAccepted = "one of deferred, immediate, serial";

// The error text for a bad value, built the way a user reads it.
std::string BadValue(const char* knob, const std::string& value, const char* accepted) {
  return std::string(knob) + ": bad value '" + value + "': expected " + accepted;
}

// Parses and returns the error ("" on success); *out gets the value.
std::string Parse(Knob k, const char* text, int64_t* out) {
  std::string err;
  *out = -12345;
  if (ParseKnob(k, text, out, &err)) {
    EXPECT_EQ(err, "") << "success must not leave an error";
    return "";
  }
  EXPECT_EQ(*out, -12345) << "a failed parse must not write the output";
  return err;
}

// Names are found case-insensitively (SQLite's PRAGMA names are) and unknown names are not
// mistaken for a knob; catches a table/enum mismatch.
TEST(KnobNames, LookupRoundTripsAndIsCaseInsensitive) {
  for (int i = 0; i < kKnobCount; ++i) {
    Knob k = static_cast<Knob>(i);
    Knob found;
    ASSERT_TRUE(KnobByName(KnobName(k), &found)) << KnobName(k);
    EXPECT_EQ(found, k);
  }
  Knob found;
  ASSERT_TRUE(KnobByName("SAFECONC_Timeout", &found));
  EXPECT_EQ(found, Knob::kTimeout);
  EXPECT_STREQ(KnobName(Knob::kTimeout), "safeconc_timeout");
  EXPECT_STREQ(KnobName(Knob::kTxn), "safeconc_txn");
  EXPECT_STREQ(KnobName(Knob::kCallTimeout), "safeconc_call_timeout");
  EXPECT_FALSE(KnobByName("safeconc_time", &found));
  EXPECT_FALSE(KnobByName("safeconc_timeoutx", &found));
  EXPECT_FALSE(KnobByName("", &found));
  EXPECT_FALSE(KnobByName(nullptr, &found));
}

// Both millisecond knobs accept exactly 0..86400000 in plain decimal digits; catches an
// off-by-one at either end and a parser that stops at the first non-digit ("12abc").
TEST(KnobParse, MillisecondKnobsAcceptTheirRange) {
  for (Knob k : {Knob::kTimeout, Knob::kCallTimeout}) {
    int64_t v;
    EXPECT_EQ(Parse(k, "0", &v), "");
    EXPECT_EQ(v, 0);
    EXPECT_EQ(Parse(k, "5000", &v), "");
    EXPECT_EQ(v, 5000);
    EXPECT_EQ(Parse(k, "86400000", &v), "");
    EXPECT_EQ(v, 86400000);
    EXPECT_EQ(Parse(k, "007", &v), "");
    EXPECT_EQ(v, 7);
  }
}

// Every kind of bad millisecond value is refused with a message naming the knob, the value
// and the accepted range; catches silent truncation, wrap-around of long digit strings and
// acceptance of signs, spaces or fractions.
TEST(KnobParse, MillisecondKnobsRefuseBadValuesWithExactText) {
  for (Knob k : {Knob::kTimeout, Knob::kCallTimeout}) {
    const char* name = KnobName(k);
    for (const char* bad :
         {"-1", "-0", "abc", "12abc", "", " 5", "5 ", "1.5", "+5", "0x10", "86400001",
          "99999999999999999999", "18446744073709551616", "deferred"}) {
      int64_t v;
      EXPECT_EQ(Parse(k, bad, &v), BadValue(name, bad, kMillisAccepted)) << "value '" << bad << "'";
    }
    int64_t v;
    EXPECT_EQ(Parse(k, nullptr, &v), BadValue(name, "", kMillisAccepted)) << "null value";
  }
}

// The txn words are matched case-insensitively and map to their modes; anything else is
// refused with the list of words; catches a prefix match ("imm") or an index mix-up.
TEST(KnobParse, TxnAcceptsItsWordsInAnyCase) {
  const struct {
    const char* text;
    TxnMode mode;
  } good[] = {{"deferred", TxnMode::kDeferred},   {"immediate", TxnMode::kImmediate},
              {"serial", TxnMode::kSerial},       {"DEFERRED", TxnMode::kDeferred},
              {"Immediate", TxnMode::kImmediate}, {"sErIaL", TxnMode::kSerial}};
  for (const auto& g : good) {
    int64_t v;
    EXPECT_EQ(Parse(Knob::kTxn, g.text, &v), "") << g.text;
    EXPECT_EQ(v, static_cast<int64_t>(g.mode)) << g.text;
  }
  for (const char* bad :
       {"", "imm", "immediatex", "exclusive", "0", "1", "-1", " serial", "99999999999999999999"}) {
    int64_t v;
    EXPECT_EQ(Parse(Knob::kTxn, bad, &v), BadValue("safeconc_txn", bad, kTxnAccepted))
        << "value '" << bad << "'";
  }
}

// Format is the inverse of Parse, so `PRAGMA safeconc_txn` shows what the user wrote.
TEST(KnobFormat, PrintsWhatParseAccepts) {
  EXPECT_EQ(FormatKnob(Knob::kTxn, static_cast<int64_t>(TxnMode::kDeferred)), "deferred");
  EXPECT_EQ(FormatKnob(Knob::kTxn, static_cast<int64_t>(TxnMode::kImmediate)), "immediate");
  EXPECT_EQ(FormatKnob(Knob::kTxn, static_cast<int64_t>(TxnMode::kSerial)), "serial");
  EXPECT_EQ(FormatKnob(Knob::kTimeout, 5000), "5000");
  EXPECT_EQ(FormatKnob(Knob::kCallTimeout, 86400000), "86400000");
}

// The contract's defaults, and a KnobSet starts from the process defaults current at its
// construction (what a later open copies); catches a KnobSet that ignores safeconc_config.
TEST(KnobDefaults, ContractDefaultsAndNewSetsCopyThem) {
  EXPECT_EQ(DefaultKnob(Knob::kTimeout), 5000);
  EXPECT_EQ(DefaultKnob(Knob::kTxn), static_cast<int64_t>(TxnMode::kDeferred));
  EXPECT_EQ(DefaultKnob(Knob::kCallTimeout), 10000);

  KnobSet before;
  SetDefaultKnob(Knob::kTimeout, 1234);
  SetDefaultKnob(Knob::kTxn, static_cast<int64_t>(TxnMode::kSerial));
  KnobSet after;
  EXPECT_EQ(before.Get(Knob::kTimeout), 5000);
  EXPECT_EQ(after.Get(Knob::kTimeout), 1234);
  EXPECT_EQ(after.txn(), TxnMode::kSerial);
  EXPECT_EQ(after.Get(Knob::kCallTimeout), 10000);
  after.Set(Knob::kCallTimeout, 7);
  EXPECT_EQ(after.Get(Knob::kCallTimeout), 7);
  EXPECT_EQ(DefaultKnob(Knob::kCallTimeout), 10000) << "a connection's set must not leak";
  SetDefaultKnob(Knob::kTimeout, 5000);
  SetDefaultKnob(Knob::kTxn, static_cast<int64_t>(TxnMode::kDeferred));
}

// Strings are escaped as JSON requires (quote, backslash, every control character) and
// non-ASCII bytes pass through; catches stats output that json.loads would reject.
TEST(JsonWriter, EscapesStrings) {
  JsonWriter w;
  w.String(std::string("a\"b\\c\nd\re\tf\x01g\x1f h\x7f") + "\xc3\xa9" + std::string(1, '\0'));
  EXPECT_EQ(w.str(), "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001f h\x7f\xc3\xa9\\u0000\"");
}

// Bytes that are not well-formed UTF-8 (a stray continuation byte, a lead byte cut short,
// overlong forms, a surrogate, a code point above U+10FFFF, 0xff) each become U+FFFD, and
// well-formed 2-, 3- and 4-byte sequences pass as they are; catches safeconc_stats() output
// that JSON parsers reject because a database path held Latin-1 bytes.
TEST(JsonWriter, ReplacesMalformedUtf8) {
  // Each malformed piece is followed by a letter, kept apart so no hex escape runs into it.
  const std::string in = std::string("a") + "\x80" + "b" + "\xe2\x82" + "c" + "\xc0\xaf" + "d" +
                         "\xe0\x80\x80" + "e" + "\xed\xa0\x80" + "f" + "\xf4\x90\x80\x80" + "g" +
                         "\xff" + "h" + "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  const std::string r = "\\ufffd";
  JsonWriter w;
  w.String(in);
  EXPECT_EQ(w.str(), "\"a" + r + "b" + r + r + "c" + r + r + "d" + r + r + r + "e" + r + r + r +
                         "f" + r + r + r + r + "g" + r + "h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
}

// Commas go between members and elements, never after a key or before the first member,
// across nesting; catches a separator bug that only shows in nested output.
TEST(JsonWriter, SeparatesNestedValues) {
  JsonWriter w;
  w.BeginObject()
      .Field("a", int64_t{1})
      .Field("s", std::string("x"))
      .Key("o")
      .BeginObject()
      .EndObject()
      .Key("arr")
      .BeginArray()
      .Int(-2)
      .Bool(true)
      .Bool(false)
      .Null()
      .BeginObject()
      .Field("k", int64_t{3})
      .EndObject()
      .BeginArray()
      .EndArray()
      .EndArray()
      .Key("d")
      .Double(1.5)
      .Key("nan")
      .Double(std::numeric_limits<double>::quiet_NaN())
      .EndObject();
  EXPECT_EQ(w.str(),
            "{\"a\":1,\"s\":\"x\",\"o\":{},\"arr\":[-2,true,false,null,{\"k\":3},[]],"
            "\"d\":1.500,\"nan\":null}");
}

}  // namespace
}  // namespace safeconc
