//! A map from text keys to values bounded by the bytes it holds, for the per-session memos of
//! the router (prepared statements, statement shapes, `search_path` resolutions).
//!
//! Every entry is charged its key length, the value size the caller declares and a fixed
//! overhead for the bookkeeping; the total never exceeds the budget. Inserting evicts the least
//! recently inserted (or refreshed) entries until the new one fits. *Pinned* entries are never
//! evicted (the router pins statements only it knows, which the client still relies on); an
//! insert that cannot fit even after evicting everything unpinned is refused. Every operation
//! is O(1): entries live in a slab threaded by a doubly linked list in eviction order (pinned
//! entries are kept out of the list), and the hash map points into the slab.

use std::collections::HashMap;
use std::sync::Arc;

/// Bytes charged per entry on top of key and value: the hash map slot, the slab node, the
/// shared key's reference counts.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 96;

const NIL: usize = usize::MAX;

struct Node<V> {
    key: Arc<str>,
    value: V,
    bytes: usize,
    pinned: bool,
    prev: usize,
    next: usize,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoFull {
    /// What the refused entry would have cost.
    pub entry_bytes: usize,
    /// The map's budget.
    pub max_bytes: usize,
}

/// See the module docs.
pub(crate) struct ByteBoundedMap<V> {
    index: HashMap<Arc<str>, usize>,
    slab: Vec<Option<Node<V>>>,
    free: Vec<usize>,
    /// Oldest unpinned entry (evicted first).
    head: usize,
    /// Newest unpinned entry.
    tail: usize,
    bytes: usize,
    pinned_bytes: usize,
    max_bytes: usize,
    evicted: u64,
}

impl<V> ByteBoundedMap<V> {
    pub fn new(max_bytes: usize) -> Self {
        ByteBoundedMap {
            index: HashMap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            pinned_bytes: 0,
            max_bytes,
            evicted: 0,
        }
    }

    /// What an entry with this key and value size costs.
    pub fn entry_bytes(key: &str, value_bytes: usize) -> usize {
        key.len()
            .saturating_add(value_bytes)
            .saturating_add(ENTRY_OVERHEAD_BYTES)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes charged for all entries.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped to make room since the map was created.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let &i = self.index.get(key)?;
        self.slab[i].as_ref().map(|n| &n.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let &i = self.index.get(key)?;
        self.slab[i].as_mut().map(|n| &mut n.value)
    }

    /// Like [`ByteBoundedMap::get`], and makes the entry the last to be evicted.
    pub fn get_refresh(&mut self, key: &str) -> Option<&V> {
        let &i = self.index.get(key)?;
        if !self.node(i).pinned && self.tail != i {
            self.unlink(i);
            self.link_tail(i);
        }
        self.slab[i].as_ref().map(|n| &n.value)
    }

    /// True if a pinned entry of this cost could be inserted under `key` (replacing what is
    /// there) without passing the budget.
    pub fn fits_pinned(&self, key: &str, value_bytes: usize) -> bool {
        let replaced = match self.index.get(key) {
            Some(&i) if self.node(i).pinned => self.node(i).bytes,
            _ => 0,
        };
        self.pinned_bytes - replaced + Self::entry_bytes(key, value_bytes) <= self.max_bytes
    }

    /// Inserts or replaces `key`, evicting the oldest unpinned entries until it fits. Refused
    /// (and any old entry under `key` removed) when it cannot fit.
    pub fn insert(
        &mut self,
        key: &str,
        value: V,
        value_bytes: usize,
        pinned: bool,
    ) -> Result<(), MemoFull> {
        self.remove(key);
        let bytes = Self::entry_bytes(key, value_bytes);
        let full = MemoFull {
            entry_bytes: bytes,
            max_bytes: self.max_bytes,
        };
        if self.pinned_bytes.saturating_add(bytes) > self.max_bytes {
            return Err(full);
        }
        while self.bytes + bytes > self.max_bytes {
            if self.head == NIL {
                return Err(full);
            }
            let oldest = self.head;
            let key = self.node(oldest).key.clone();
            self.remove(&key);
            self.evicted += 1;
        }
        let key: Arc<str> = Arc::from(key);
        let node = Node {
            key: key.clone(),
            value,
            bytes,
            pinned,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(node);
                i
            }
            None => {
                self.slab.push(Some(node));
                self.slab.len() - 1
            }
        };
        if !pinned {
            self.link_tail(i);
        } else {
            self.pinned_bytes += bytes;
        }
        self.bytes += bytes;
        self.index.insert(key, i);
        Ok(())
    }

    /// Pins or unpins an entry; an unpinned entry becomes the newest.
    pub fn set_pinned(&mut self, key: &str, pinned: bool) {
        let Some(&i) = self.index.get(key) else {
            return;
        };
        let node = self.node(i);
        if node.pinned == pinned {
            return;
        }
        let bytes = node.bytes;
        if pinned {
            self.unlink(i);
            self.pinned_bytes += bytes;
        } else {
            self.pinned_bytes -= bytes;
            self.link_tail(i);
        }
        self.node_mut(i).pinned = pinned;
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.index.remove(key)?;
        if self.node(i).pinned {
            self.pinned_bytes -= self.node(i).bytes;
        } else {
            self.unlink(i);
        }
        let node = self.slab[i].take().expect("indexed slab entry");
        self.bytes -= node.bytes;
        self.free.push(i);
        Some(node.value)
    }

    /// Removes every entry; the budget stays.
    #[allow(dead_code)]
    pub fn clear(&mut self) {
        self.index.clear();
        self.slab.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
        self.pinned_bytes = 0;
    }

    fn node(&self, i: usize) -> &Node<V> {
        self.slab[i].as_ref().expect("linked slab entry")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node<V> {
        self.slab[i].as_mut().expect("linked slab entry")
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = {
            let n = self.node(i);
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
        let n = self.node_mut(i);
        n.prev = NIL;
        n.next = NIL;
    }

    fn link_tail(&mut self, i: usize) {
        let tail = self.tail;
        {
            let n = self.node_mut(i);
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.node_mut(tail).next = i;
        }
        self.tail = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(key: &str, v: usize) -> usize {
        ByteBoundedMap::<u32>::entry_bytes(key, v)
    }

    #[test]
    fn evicts_oldest_to_stay_within_bytes() {
        let max = cost("a", 100) * 3;
        let mut m = ByteBoundedMap::new(max);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            m.insert(k, i as u32, 100, false).unwrap();
            assert!(m.bytes() <= max);
        }
        assert_eq!(m.len(), 3);
        assert!(m.get("a").is_none(), "the oldest goes first");
        assert_eq!(m.evicted(), 1);
        // Refreshing "b" makes "c" the oldest.
        assert_eq!(m.get_refresh("b"), Some(&1));
        m.insert("e", 4, 100, false).unwrap();
        assert!(m.get("c").is_none());
        assert_eq!(m.get("b"), Some(&1));
        // Replacing a key charges the new size only.
        m.insert("b", 9, 100, false).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.bytes(), max);
    }

    #[test]
    fn pinned_entries_stay_and_refuse_overflow() {
        let max = cost("p1", 100) * 2;
        let mut m = ByteBoundedMap::new(max);
        m.insert("p1", 1, 100, true).unwrap();
        m.insert("u1", 2, 100, false).unwrap();
        // A second pinned entry evicts the unpinned one.
        assert!(m.fits_pinned("p2", 100));
        m.insert("p2", 3, 100, true).unwrap();
        assert!(m.get("u1").is_none());
        // Nothing unpinned is left to evict: refused, and nothing was lost.
        assert!(!m.fits_pinned("p3", 100));
        let err = m.insert("u2", 4, 100, false).unwrap_err();
        assert_eq!(err.max_bytes, max);
        assert_eq!((m.get("p1"), m.get("p2")), (Some(&1), Some(&3)));
        // Replacing a pinned entry fits in its own room.
        assert!(m.fits_pinned("p2", 100));
        // Unpinned entries become evictable.
        m.set_pinned("p1", false);
        m.insert("u3", 5, 100, false).unwrap();
        assert!(m.get("p1").is_none());
        m.remove("u3");
        assert_eq!(m.len(), 1);
        assert_eq!(m.bytes(), cost("p2", 100));
        m.remove("p2");
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn entries_larger_than_the_budget_are_refused() {
        let mut m = ByteBoundedMap::new(1000);
        m.insert("k", 1u8, 10, false).unwrap();
        assert!(m.insert("k", 2u8, 5000, false).is_err());
        assert!(
            m.get("k").is_none(),
            "a refused replacement leaves no stale entry"
        );
    }

    #[test]
    fn many_operations_keep_the_accounting_exact() {
        let mut m = ByteBoundedMap::new(64 * 1024);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..50_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = format!("k{}", rng % 2000);
            match rng % 7 {
                0 => {
                    m.remove(&key);
                }
                1 => m.set_pinned(&key, rng.is_multiple_of(2)),
                2 => {
                    let _ = m.get_refresh(&key);
                }
                _ => {
                    let _ = m.insert(&key, rng, (rng % 300) as usize, rng.is_multiple_of(11));
                }
            }
            assert!(m.bytes() <= 64 * 1024);
        }
        let total: usize = m.slab.iter().flatten().map(|n| n.bytes).sum::<usize>();
        assert_eq!(total, m.bytes());
        assert_eq!(m.slab.iter().flatten().count(), m.len());
    }
}
