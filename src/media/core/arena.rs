//! Slabs indexed by their own key type, so a producer key can never index the consumers.

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use slab::Slab;

/// A slab key of one kind of entry.
pub trait Key: Copy {
    fn from_index(index: usize) -> Self;
    fn index(self) -> usize;
}

macro_rules! slab_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(usize);

        impl Key for $name {
            fn from_index(index: usize) -> Self {
                $name(index)
            }
            fn index(self) -> usize {
                self.0
            }
        }
    };
}

slab_key!(
    /// A transport (one `Rtc`) of one worker.
    TransportKey
);
slab_key!(
    /// A producer (incoming track) of one worker.
    ProducerKey
);
slab_key!(
    /// A consumer (one producer forwarded to one subscriber transport) of one worker.
    ConsumerKey
);

/// A [`Slab`] whose keys are `K`.
pub struct Arena<K, T> {
    slab: Slab<T>,
    key: PhantomData<K>,
}

impl<K: Key, T> Arena<K, T> {
    pub fn new() -> Self {
        Arena {
            slab: Slab::new(),
            key: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn insert(&mut self, value: T) -> K {
        K::from_index(self.slab.insert(value))
    }

    /// Panics if `key` is vacant, like indexing.
    pub fn remove(&mut self, key: K) -> T {
        self.slab.remove(key.index())
    }

    pub fn try_remove(&mut self, key: K) -> Option<T> {
        self.slab.try_remove(key.index())
    }

    pub fn contains(&self, key: K) -> bool {
        self.slab.contains(key.index())
    }

    pub fn get(&self, key: K) -> Option<&T> {
        self.slab.get(key.index())
    }

    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        self.slab.get_mut(key.index())
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab.iter().map(|(i, v)| (K::from_index(i), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut T)> {
        self.slab.iter_mut().map(|(i, v)| (K::from_index(i), v))
    }
}

impl<K: Key, T> Index<K> for Arena<K, T> {
    type Output = T;
    fn index(&self, key: K) -> &T {
        &self.slab[key.index()]
    }
}

impl<K: Key, T> IndexMut<K> for Arena<K, T> {
    fn index_mut(&mut self, key: K) -> &mut T {
        &mut self.slab[key.index()]
    }
}
