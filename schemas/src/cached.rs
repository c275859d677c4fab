//! Which inputs a node holds in its cache, as its load report tells
//! ([`CachedInputs`]): their digests while they are few, else a Bloom
//! filter of the most recently used ones, so that a cache of thousands of
//! inputs keeps the report a few kilobytes and a dispatcher can still send
//! an input to the node that would not fetch it.
//!
//! The filter is this crate's own, not a library's: its bit layout is part
//! of the wire contract (a dispatcher and an executor built apart must
//! agree on it, where a crate's layout may change with its version), and
//! the keys are SHA-256 digests already, so a fixed mixing function over
//! them is enough for the two hashes of double hashing.

use serde::{Deserialize, Serialize};

/// Digests listed one by one up to this many; more go into a filter.
pub const LISTED_INPUTS: usize = 16;
/// Most inputs a filter holds (the most recently used); the others are
/// left out, so the report stays bounded (about 5 KB at this count) and
/// the false-positive rate stays at [`FILTER_FALSE_POSITIVES`].
pub const FILTERED_INPUTS: usize = 4096;
/// The false-positive rate a filter is sized for: the chance that a
/// node is believed to hold an input it does not (it then fetches it).
pub const FILTER_FALSE_POSITIVES: f64 = 0.01;
/// Bits per input for that rate: `-ln(p) / ln(2)^2`, rounded up.
const BITS_PER_INPUT: usize = 10;
/// Hashes per input for that rate: `bits per input × ln 2`, rounded.
const HASHES: u32 = 7;

/// The inputs held in a node's cache: exact digests when few, a filter
/// when many; empty when it holds none (or does not say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedInputs {
    /// The digests (`SHA-256=<base64url>`, as [`crate::InputObject`]
    /// names them), when at most [`LISTED_INPUTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    /// Else a filter of the [`FILTERED_INPUTS`] most recently used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DigestFilter>,
}

/// A Bloom filter of digests: `hashes` bits set per digest among
/// `bits.len() × 8`, at positions `h1 + i × h2` (i from 0), where `h1` and
/// `h2` are the low and high halves of [`digest_hash`] of the digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestFilter {
    /// The bit array, bit `n` in byte `n / 8` at `1 << (n % 8)`.
    #[serde(with = "serde_bytes")]
    pub bits: Vec<u8>,
    /// Bits set per digest.
    pub hashes: u32,
    /// Digests put in.
    pub count: u32,
}

impl CachedInputs {
    /// What a node holding `digests`, most recently used first, reports.
    pub fn of<S: AsRef<str>>(digests: &[S]) -> Self {
        if digests.len() <= LISTED_INPUTS {
            return Self {
                digests: digests.iter().map(|d| d.as_ref().to_owned()).collect(),
                filter: None,
            };
        }
        let kept = &digests[..digests.len().min(FILTERED_INPUTS)];
        Self {
            digests: Vec::new(),
            filter: Some(DigestFilter::of(kept)),
        }
    }

    /// Whether the node holds `digest`: surely when listed, or probably,
    /// per the filter (false at most at the rate it was sized for).
    pub fn holds(&self, digest: &str) -> bool {
        self.digests.iter().any(|d| d == digest)
            || self.filter.as_ref().is_some_and(|f| f.contains(digest))
    }

    /// Whether the node says it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.filter.as_ref().is_none_or(|f| f.count == 0)
    }
}

impl DigestFilter {
    /// A filter of `digests`, sized for [`FILTER_FALSE_POSITIVES`].
    pub fn of<S: AsRef<str>>(digests: &[S]) -> Self {
        let bytes = (digests.len() * BITS_PER_INPUT).div_ceil(8).max(1);
        let mut filter = Self {
            bits: vec![0; bytes],
            hashes: HASHES,
            count: u32::try_from(digests.len()).unwrap_or(u32::MAX),
        };
        for digest in digests {
            for bit in filter.positions(digest.as_ref()) {
                filter.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        filter
    }

    /// Whether `digest` may have been put in (never false for one that was).
    pub fn contains(&self, digest: &str) -> bool {
        !self.bits.is_empty()
            && self
                .positions(digest)
                .all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// The bits of `digest`: double hashing over the filter's size. A
    /// filter claiming more hashes than [`HASHES`] (a forged or broken
    /// report) costs no more than that.
    fn positions(&self, digest: &str) -> impl Iterator<Item = usize> {
        let size = (self.bits.len() as u64) * 8;
        let hash = digest_hash(digest);
        let (h1, h2) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..u64::from(self.hashes.min(HASHES)))
            .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % size.max(1)) as usize)
    }
}

/// The 64-bit hash of a digest a filter uses: FNV-1a over its UTF-8 bytes,
/// then the SplitMix64 finaliser, so every bit depends on every byte.
pub fn digest_hash(digest: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in digest.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests as the object store spells them, distinct per `i`.
    fn digest(i: usize) -> String {
        let hash = digest_hash(&format!("input {i}"));
        format!("SHA-256={hash:016x}{:016x}Q", hash.rotate_left(17))
    }

    #[test]
    fn few_inputs_are_listed_and_held_exactly() {
        let held: Vec<String> = (0..LISTED_INPUTS).map(digest).collect();
        let cached = CachedInputs::of(&held);
        assert_eq!(cached.digests, held);
        assert!(cached.filter.is_none());
        assert!(held.iter().all(|d| cached.holds(d)));
        assert!(!(LISTED_INPUTS..LISTED_INPUTS + 1000).any(|i| cached.holds(&digest(i))));
        assert!(CachedInputs::default().is_empty() && !cached.is_empty());
        assert!(!CachedInputs::default().holds(&digest(0)));
    }

    /// Many inputs: a filter holding every one it was given, wrong about
    /// others at about the rate it is sized for, and bounded in size
    /// however many the cache holds (the most recent are kept).
    #[test]
    fn many_inputs_go_into_a_bounded_filter_with_the_stated_false_positive_rate() {
        let held: Vec<String> = (0..FILTERED_INPUTS * 3).map(digest).collect();
        let cached = CachedInputs::of(&held);
        let filter = cached.filter.as_ref().unwrap();
        assert!(cached.digests.is_empty());
        assert_eq!(filter.count as usize, FILTERED_INPUTS);
        assert!(filter.bits.len() <= FILTERED_INPUTS * BITS_PER_INPUT / 8 + 1);
        assert!(held[..FILTERED_INPUTS].iter().all(|d| cached.holds(d)));
        let probes = 100_000;
        let wrong = (1_000_000..1_000_000 + probes)
            .filter(|i| cached.holds(&digest(*i)))
            .count();
        let rate = wrong as f64 / probes as f64;
        assert!(rate < FILTER_FALSE_POSITIVES * 1.5, "{rate}");
        // The report stays a few kilobytes.
        let report = crate::encode(&cached).unwrap();
        assert!(report.len() < 6000, "{}", report.len());
        // A small filter (just past the listed count) is right as often.
        let held: Vec<String> = (0..LISTED_INPUTS + 1).map(digest).collect();
        let cached = CachedInputs::of(&held);
        assert!(held.iter().all(|d| cached.holds(d)));
        let wrong = (1_000_000..1_000_000 + probes)
            .filter(|i| cached.holds(&digest(*i)))
            .count();
        assert!((wrong as f64 / probes as f64) < 0.03, "{wrong}");
    }

    /// A filter from the wire that is empty or claims absurd hashes is
    /// read safely: nothing held, or no more work than a sane one.
    #[test]
    fn a_broken_filter_holds_nothing_or_stays_cheap() {
        let empty = DigestFilter {
            bits: Vec::new(),
            hashes: 7,
            count: 3,
        };
        assert!(!empty.contains(&digest(1)));
        let full = DigestFilter {
            bits: vec![0xff; 8],
            hashes: u32::MAX,
            count: 1,
        };
        assert!(full.contains(&digest(1)));
        let cached: CachedInputs =
            crate::decode(&crate::encode(&CachedInputs::of(&[digest(1)])).unwrap()).unwrap();
        assert!(cached.holds(&digest(1)));
    }
}
