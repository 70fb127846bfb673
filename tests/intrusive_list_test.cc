// intrusive_list_test.cc - base/intrusive_list.h, the list the coordinator's line and readers
// and an fd owner's task queue are built on: order, removal from anywhere, membership, and
// Swap (how Owner::Close takes its queue out under the lock).
#include "base/intrusive_list.h"

#include <gtest/gtest.h>

#include <vector>

namespace safeconc {
namespace {

struct Node {
  int id;
  ListLink<Node> a;  // two links: one node on two lists at once, as a ticket in line and reading
  ListLink<Node> b;
};
using ListA = IntrusiveList<Node, &Node::a>;
using ListB = IntrusiveList<Node, &Node::b>;

template <typename List>
std::vector<int> Ids(const List& l) {
  std::vector<int> ids;
  for (Node* n = l.front(); n != nullptr; n = l.Next(n)) ids.push_back(n->id);
  return ids;
}

// Push at both ends and removal from the front, middle and back keep order, size and the
// links of the neighbours right. Would catch a stale back pointer after removing the last
// element (the next PushBack would link to a removed node).
TEST(IntrusiveList, PushAndRemoveAnywhereKeepOrder) {
  Node n[4] = {{1, {}, {}}, {2, {}, {}}, {3, {}, {}}, {4, {}, {}}};
  ListA l;
  l.PushBack(&n[1]);
  l.PushBack(&n[2]);
  l.PushFront(&n[0]);
  l.PushBack(&n[3]);
  EXPECT_EQ(Ids(l), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(l.size(), 4);
  l.Remove(&n[2]);  // middle
  l.Remove(&n[3]);  // back
  EXPECT_EQ(Ids(l), (std::vector<int>{1, 2}));
  l.PushBack(&n[3]);
  EXPECT_EQ(Ids(l), (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(l.PopFront(), &n[0]);  // front
  EXPECT_EQ(Ids(l), (std::vector<int>{2, 4}));
  EXPECT_EQ(l.PopFront(), &n[1]);
  EXPECT_EQ(l.PopFront(), &n[3]);
  EXPECT_EQ(l.PopFront(), nullptr);
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.size(), 0);
}

// Contains answers for this list only, including for a lone element (no neighbours on either
// side), and after removal. Would catch membership read from the links alone.
TEST(IntrusiveList, ContainsIsPerListAndClearedByRemove) {
  Node x{1, {}, {}}, y{2, {}, {}};
  ListA a;
  ListB b;
  EXPECT_FALSE(a.Contains(&x));
  a.PushBack(&x);
  EXPECT_TRUE(a.Contains(&x));
  EXPECT_FALSE(b.Contains(&x));
  b.PushBack(&x);  // the same node on a second list through its other link
  b.PushBack(&y);
  EXPECT_TRUE(b.Contains(&y));
  EXPECT_FALSE(a.Contains(&y));
  a.Remove(&x);
  EXPECT_FALSE(a.Contains(&x));
  EXPECT_TRUE(b.Contains(&x));
  EXPECT_EQ(Ids(b), (std::vector<int>{1, 2}));
}

// Swap moves every element to the other list and leaves the links valid: the taken list can
// be walked and emptied while the original one is used again.
TEST(IntrusiveList, SwapTakesEveryElement) {
  Node n[3] = {{1, {}, {}}, {2, {}, {}}, {3, {}, {}}};
  ListA queue, taken;
  for (Node& x : n) queue.PushBack(&x);
  taken.Swap(queue);
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(Ids(taken), (std::vector<int>{1, 2, 3}));
  queue.PushBack(taken.PopFront());
  EXPECT_EQ(Ids(queue), (std::vector<int>{1}));
  EXPECT_EQ(Ids(taken), (std::vector<int>{2, 3}));
}

}  // namespace
}  // namespace safeconc
