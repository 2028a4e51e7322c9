//! The parsed keys of one partition's token objects, at most a configured
//! number (`limits.key_cache_entries`), the least recently used dropped
//! first. Parsing a key costs far more than one operation with it (an RSA
//! key is checked when it is loaded), so keys in use stay parsed; but a
//! partition of a million keys cannot keep every key it ever used parsed in
//! memory for ever.
//!
//! A key is found by its OUID and checked against the tag of the sealed
//! secret it was parsed from: an object replaced by another with the same
//! OUID (the two sides of an ambiguous retry meeting, where the later one
//! wins) has another sealed secret, so the stale parse is never used. A
//! destroyed object's parse is dropped at once ([`KeyCache::forget`]), not
//! left for the eviction to find.
use crate::sync::Recover;
use hahsm_crypto::LoadedKey;
use hahsm_token::{Ouid, TokenResult};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The tag of a sealed secret: its last 16 bytes, the AES-GCM tag, which
/// differs for every sealing.
type Tag = [u8; 16];

fn tag_of(sealed: &[u8]) -> Tag {
    let mut tag = [0u8; 16];
    let n = sealed.len().min(16);
    tag[16 - n..].copy_from_slice(&sealed[sealed.len() - n..]);
    tag
}

pub struct KeyCache {
    entries: Mutex<LruCache<Ouid, (Tag, Arc<LoadedKey>)>>,
    /// Keys parsed since the partition was activated: with the number of
    /// entries, it tells an operator whether the cache is too small.
    loads: AtomicU64,
}

impl KeyCache {
    /// A cache of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> KeyCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        KeyCache {
            entries: Mutex::new(LruCache::new(capacity)),
            loads: AtomicU64::new(0),
        }
    }

    /// The key of `ouid` parsed from `sealed`, from the cache or by `load`.
    /// The parse runs outside the lock: two threads that miss at once may
    /// both parse, and the second's result is kept.
    pub fn get_or_load(
        &self,
        ouid: Ouid,
        sealed: &[u8],
        load: impl FnOnce() -> TokenResult<LoadedKey>,
    ) -> TokenResult<Arc<LoadedKey>> {
        let tag = tag_of(sealed);
        if let Some((t, k)) = self.entries.lock_or_recover().get(&ouid) {
            if *t == tag {
                return Ok(k.clone());
            }
        }
        let key = Arc::new(load()?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.entries.lock_or_recover().put(ouid, (tag, key.clone()));
        Ok(key)
    }

    /// Drops the parse of an object that is gone.
    pub fn forget(&self, ouid: &Ouid) {
        self.entries.lock_or_recover().pop(ouid);
    }

    /// (keys parsed now, keys parsed since activation).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.entries.lock_or_recover().len() as u64,
            self.loads.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_crypto::{KeyMaterial, SecretBytes};

    fn aes(byte: u8) -> TokenResult<LoadedKey> {
        LoadedKey::load(KeyMaterial::Aes(SecretBytes::new(vec![byte; 32])))
    }

    #[test]
    fn the_least_recently_used_key_goes_first_and_a_replaced_secret_is_parsed_again() {
        let cache = KeyCache::new(2);
        let (a, b, c) = (Ouid([1; 16]), Ouid([2; 16]), Ouid([3; 16]));
        cache
            .get_or_load(a, b"sealed-a........tag-a...........", || aes(1))
            .unwrap();
        cache
            .get_or_load(b, b"sealed-b........tag-b...........", || aes(2))
            .unwrap();
        // a is used again, so b is the least recently used when c comes.
        cache
            .get_or_load(a, b"sealed-a........tag-a...........", || panic!("a is cached"))
            .unwrap();
        cache
            .get_or_load(c, b"sealed-c........tag-c...........", || aes(3))
            .unwrap();
        assert_eq!(cache.stats(), (2, 3));
        let mut parsed = false;
        cache
            .get_or_load(b, b"sealed-b........tag-b...........", || {
                parsed = true;
                aes(2)
            })
            .unwrap();
        assert!(parsed, "b was evicted and is parsed again");
        // The same OUID with another sealed secret is parsed again.
        let mut reparsed = false;
        cache
            .get_or_load(b, b"sealed-b........other-tag.......", || {
                reparsed = true;
                aes(9)
            })
            .unwrap();
        assert!(reparsed, "a replaced object's parse is not reused");
        cache.forget(&b);
        assert_eq!(cache.stats().0, 1);
        // A failed parse caches nothing.
        assert!(cache
            .get_or_load(a, b"x", || Err(hahsm_token::TokenError::DeviceError(
                "bad".into()
            )))
            .is_err());
        assert_eq!(cache.stats().0, 1);
    }
}
