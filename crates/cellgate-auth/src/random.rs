//! Randomness for secrets, straight from the operating system.

use rand::TryRngCore as _;
use rand::rngs::OsRng;

/// `N` bytes from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system cannot provide randomness: no secret can be
/// made safely then, and going on with a weak one would be worse.
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng
        .try_fill_bytes(&mut out)
        .unwrap_or_else(|e| panic!("the operating system's random number generator failed: {e}"));
    out
}

/// `count` symbols drawn uniformly from `alphabet` (at most 256 symbols),
/// by rejection sampling so no symbol is more likely than another.
pub(crate) fn symbols(alphabet: &[u8], count: usize) -> String {
    assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let n = alphabet.len();
    // The largest multiple of n that fits in a byte's 256 values.
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(count);
    while out.len() < count {
        for b in bytes::<32>() {
            if usize::from(b) < limit && out.len() < count {
                out.push(char::from(alphabet[usize::from(b) % n]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_come_from_the_alphabet_and_vary() {
        let a = symbols(b"BCDF", 64);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b"BCDF".contains(&b)));
        assert_ne!(a, symbols(b"BCDF", 64));
        assert_ne!(bytes::<32>(), bytes::<32>());
    }
}
