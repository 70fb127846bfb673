// intrusive_list.h - a doubly-linked list whose nodes are the elements themselves, as in
// leveldb's writer queue or the kernel's list_head: an element carries one ListLink member per
// list it can be on, so linking and unlinking never allocate and never fail, and an element is
// unlinked from the middle in O(1) without a search.
//
//   struct Waiter { ListLink<Waiter> link; ... };
//   IntrusiveList<Waiter, &Waiter::link> line;   // owned by whoever guards it
//   line.PushBack(&w);  ...  line.Remove(&w);
//   for (Waiter* u = line.front(); u != nullptr; u = line.Next(u)) ...
//
// Ownership: the list owns nothing. An element is on at most one list per link member, and
// must be removed from it before it is destroyed, unless that list is never used again.
// Thread safety: none. The list and the links of its elements form one piece of state: the
// owner guards it with one mutex (declare the list SC_GUARDED_BY(mu_); the links are reached
// only through the list's methods).
#ifndef SAFECONC_BASE_INTRUSIVE_LIST_H
#define SAFECONC_BASE_INTRUSIVE_LIST_H

#include <cstdint>
#include <utility>

namespace safeconc {

// The links of one element on one list. Only IntrusiveList reads or writes them.
template <typename T>
class ListLink {
 public:
  ListLink() = default;
  ListLink(const ListLink&) = delete;
  ListLink& operator=(const ListLink&) = delete;

 private:
  template <typename U, ListLink<U> U::*>
  friend class IntrusiveList;
  T* prev_ = nullptr;  // null at the front (and when not linked)
  T* next_ = nullptr;  // null at the back (and when not linked)
};

template <typename T, ListLink<T> T::*kLink>
class IntrusiveList {
 public:
  IntrusiveList() = default;
  IntrusiveList(const IntrusiveList&) = delete;
  IntrusiveList& operator=(const IntrusiveList&) = delete;

  bool empty() const { return front_ == nullptr; }
  int64_t size() const { return size_; }
  T* front() const { return front_; }
  // The element after t on this list, or null at the back.
  T* Next(const T* t) const { return (t->*kLink).next_; }
  // Whether t is on this list (O(1): an element with no predecessor must be the front).
  bool Contains(const T* t) const { return (t->*kLink).prev_ != nullptr || front_ == t; }

  void PushBack(T* t) { InsertAfter(back_, t); }
  void PushFront(T* t) { InsertAfter(nullptr, t); }
  // t must be on this list (Contains(t)).
  void Remove(T* t) {
    ListLink<T>& l = t->*kLink;
    if (l.prev_ != nullptr) {
      (l.prev_->*kLink).next_ = l.next_;
    } else {
      front_ = l.next_;
    }
    if (l.next_ != nullptr) {
      (l.next_->*kLink).prev_ = l.prev_;
    } else {
      back_ = l.prev_;
    }
    l.prev_ = l.next_ = nullptr;
    --size_;
  }
  // Removes and returns the front element; null if the list is empty.
  T* PopFront() {
    T* t = front_;
    if (t != nullptr) Remove(t);
    return t;
  }
  // Exchanges the contents of two lists (e.g. to take every element out under a lock and
  // walk them after unlocking). The elements' links stay valid: they never point at a list.
  void Swap(IntrusiveList& o) {
    std::swap(front_, o.front_);
    std::swap(back_, o.back_);
    std::swap(size_, o.size_);
  }

 private:
  // Links t after prev (null: at the front); the mirror of Remove.
  void InsertAfter(T* prev, T* t) {
    T* const next = prev != nullptr ? (prev->*kLink).next_ : front_;
    ListLink<T>& l = t->*kLink;
    l.prev_ = prev;
    l.next_ = next;
    if (prev != nullptr) {
      (prev->*kLink).next_ = t;
    } else {
      front_ = t;
    }
    if (next != nullptr) {
      (next->*kLink).prev_ = t;
    } else {
      back_ = t;
    }
    ++size_;
  }

  T* front_ = nullptr;
  T* back_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace safeconc

#endif  // SAFECONC_BASE_INTRUSIVE_LIST_H
